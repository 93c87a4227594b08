//! The domain's values, checked when they are made.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use cairn_mail::{EmailAddress, registrable_domain};
use unicode_properties::general_category::UnicodeGeneralCategory;
use unicode_properties::{GeneralCategory, UnicodeEmoji};

/// A checked, lower-cased email address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Email(EmailAddress);

impl Email {
    /// Checks the syntax. This is how stored addresses are read back, so it stays as
    /// lenient as it ever was; new input goes through [`Email::parse_input`].
    pub fn parse(input: &str) -> Result<Self, String> {
        EmailAddress::parse(input)
            .map(Email)
            .map_err(|e| e.to_string())
    }

    /// Checks an address given to a command: the syntax, and that the mailer can send
    /// to it through any server. The part before the @ must be ASCII (a server need not
    /// support SMTPUTF8) and unquoted; the part after it must be a domain name, not an
    /// address literal or an IP address. An international domain is kept in its ASCII
    /// (IDNA) form, `bücher.de` as `xn--bcher-kva.de`. Last, the lower-cased address is
    /// put in a message exactly as the mailer builds one.
    pub fn parse_input(input: &str) -> Result<Self, String> {
        let checked = EmailAddress::parse(input).map_err(|e| e.to_string())?;
        let refuse = |reason: &str| format!("{input:?} is not a valid email address: {reason}");
        let Some((local, domain)) = input.trim().rsplit_once('@') else {
            return Err(refuse("it has no @"));
        };
        if let Some(c) = local.chars().find(|c| !c.is_ascii()) {
            return Err(refuse(&format!(
                "the part before the @ contains {c:?}; only ASCII letters, digits and punctuation can be sent through every mail server"
            )));
        }
        if local.starts_with('"') {
            return Err(refuse(
                "a quoted part before the @ is not accepted: the mailer cannot address most of them",
            ));
        }
        if domain.starts_with('[') || domain.parse::<IpAddr>().is_ok() {
            return Err(refuse(
                "the part after the @ must be a domain name, not an IP address",
            ));
        }
        let email = if domain.is_ascii() {
            Email(checked)
        } else {
            let ascii = idna::domain_to_ascii(domain).map_err(|_| {
                refuse("the domain has no ASCII (IDNA) form, so no mail server can look it up")
            })?;
            Email(
                EmailAddress::parse(&format!("{local}@{ascii}"))
                    .map_err(|e| refuse(&format!("in its ASCII form, {}", e.reason)))?,
            )
        };
        mailer_can_address(email.as_str()).map_err(|reason| refuse(&reason))?;
        Ok(email)
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The address, for the mailer.
    pub fn address(&self) -> &EmailAddress {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl Serialize for Email {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Email {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Email::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Email {
    fn schema_name() -> Cow<'static, str> {
        "Email".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "string", "format": "email", "maxLength": 254})
    }
}

/// Whether the mailer can put `address` in a message: it parses the address with the
/// parser the mailer uses (lettre) and builds a message to it the same way, which
/// re-reads the recipient from the written header, as sending does.
fn mailer_can_address(address: &str) -> Result<(), String> {
    use lettre::message::{Mailbox, header::ContentType};
    let parsed: lettre::Address = address
        .parse()
        .map_err(|e| format!("the mailer cannot read it ({e})"))?;
    lettre::Message::builder()
        .from(Mailbox::new(None, parsed.clone()))
        .to(Mailbox::new(None, parsed))
        .subject("")
        .header(ContentType::TEXT_PLAIN)
        .body(String::new())
        .map(drop)
        .map_err(|e| format!("the mailer cannot address a message to it ({e})"))
}

/// Top-level names, and one second-level name, reserved for special use: no mail is
/// sent from them on the internet. `example` is reserved only as a top-level name;
/// `example.com` and its kin are real, registered domains.
const RESERVED_ENDINGS: &[(&str, &str)] = &[
    ("home.arpa", "reserved for home networks (RFC 8375)"),
    (
        "arpa",
        "reserved for the internet's own infrastructure (RFC 3172)",
    ),
    ("localhost", "reserved for this machine (RFC 6761)"),
    (
        "local",
        "reserved for multicast DNS on a local network (RFC 6762)",
    ),
    ("test", "reserved for testing (RFC 6761)"),
    ("invalid", "reserved as a name that never exists (RFC 6761)"),
    ("example", "reserved for documentation (RFC 6761)"),
    ("onion", "reserved for Tor onion services (RFC 7686)"),
    ("internal", "reserved for private networks (ICANN)"),
    ("alt", "reserved for names outside the DNS (RFC 9476)"),
];

/// The address mail goes out from for a sender host: noreply@ its registrable domain.
///
/// The host must end in a public suffix the Public Suffix List knows (its implicit `*`
/// rule would call any ending a suffix), must not be an IP address, and must not end
/// in a name reserved for special use (`localhost`, `local`, `test`, `invalid`,
/// `example`, `onion`, `internal`, `alt`, `arpa`, `home.arpa`). `host` is expected
/// trimmed and lower-cased, without a final dot.
pub fn sender_address(host: &str) -> Result<Email, String> {
    let unbracketed = host
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .unwrap_or(host);
    if unbracketed.parse::<IpAddr>().is_ok() {
        return Err(format!(
            "{host:?} is an IP address: give the host name mail is sent for, e.g. mail.example.com"
        ));
    }
    for (ending, why) in RESERVED_ENDINGS {
        let under = host
            .strip_suffix(ending)
            .is_some_and(|rest| rest.is_empty() || rest.ends_with('.'));
        if under {
            return Err(format!(
                "{host:?} ends in .{ending}, which is {why}: no mail can be sent from it"
            ));
        }
    }
    let domain = registrable_domain(host).map_err(|e| e.to_string())?;
    match psl::suffix(host.as_bytes()) {
        Some(suffix) if suffix.is_known() => {}
        Some(suffix) => {
            return Err(format!(
                "{host:?} ends in .{}, which is not a known public suffix (top-level domain): check the spelling",
                String::from_utf8_lossy(suffix.as_bytes())
            ));
        }
        None => {
            return Err(format!(
                "{host:?} has no known public suffix (top-level domain)"
            ));
        }
    }
    Email::parse_input(&format!("noreply@{domain}"))
}

/// An organization's URL name: lower-case letters and digits in words joined by single
/// hyphens, 3 to 63 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Slug(String);

impl Slug {
    pub fn parse(input: &str) -> Result<Self, String> {
        let valid_chars = input
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !(3..=63).contains(&input.len()) {
            return Err(format!("{input:?} must be 3 to 63 characters long"));
        }
        if !valid_chars || input.starts_with('-') || input.ends_with('-') || input.contains("--") {
            return Err(format!(
                "{input:?} is not a slug: use lower-case letters and digits, with single hyphens between words (e.g. sunrise-care)"
            ));
        }
        Ok(Slug(input.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Slug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Slug {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Slug {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Slug::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Slug {
    fn schema_name() -> Cow<'static, str> {
        "Slug".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "string", "pattern": "^[a-z0-9]+(-[a-z0-9]+)*$", "minLength": 3, "maxLength": 63})
    }
}

/// The JSON Schema pattern of a name given to a command: not only spaces, and none of
/// the characters [`Name::parse_input`] refuses in the Basic Multilingual Plane (the
/// control, invisible formatting and line or paragraph separator characters), except
/// the zero-width joiner, which it keeps between emoji. The server checks the rest:
/// that joiner elsewhere, and formatting characters beyond U+FFFF.
pub const NAME_PATTERN: &str = r"^[^\x00-\x1f\x7f-\x9f\xad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e\u200b\u200c\u200e\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb]*[^\s\x00-\x1f\x7f-\x9f\xad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e\u200b\u200c\u200e\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb][^\x00-\x1f\x7f-\x9f\xad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e\u200b\u200c\u200e\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb]*$";

/// A display name for a person or an organization: 1 to 200 characters, trimmed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Name(String);

impl Name {
    /// Checks a name as stored. This is how stored names are read back, so it stays as
    /// lenient as it ever was; new input goes through [`Name::parse_input`].
    pub fn parse(input: &str) -> Result<Self, String> {
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err("must not be empty".to_owned());
        }
        if trimmed.chars().count() > 200 {
            return Err("must be at most 200 characters".to_owned());
        }
        if trimmed.chars().any(char::is_control) {
            return Err("must not contain control characters".to_owned());
        }
        Ok(Name(trimmed.to_owned()))
    }

    /// Checks a name given to a command: as [`Name::parse`], and without characters
    /// that change how the text around them is shown or read: control characters,
    /// invisible formatting characters (Unicode category Cf: bidi overrides, embeddings,
    /// isolates and marks, zero-width spaces and joiners, the byte order mark, soft
    /// hyphens, tags…) and line or paragraph separators. A zero-width joiner is kept
    /// between two emoji, where it joins them into one (U+1F469 U+200D U+1F4BB, a woman
    /// technologist).
    pub fn parse_input(input: &str) -> Result<Self, String> {
        let chars: Vec<char> = input.chars().collect();
        for (index, &c) in chars.iter().enumerate() {
            if c == '\u{200D}' && joins_emoji(&chars, index) {
                continue;
            }
            if let Some(what) = unsafe_in_name(c) {
                return Err(format!(
                    "contains U+{code:04X} ({what}) at character {position}; a name may not hold control characters, invisible formatting characters or line separators",
                    code = u32::from(c),
                    position = index + 1,
                ));
            }
        }
        Self::parse(input)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether the zero-width joiner at `index` joins two emoji (after an emoji, perhaps
/// with its presentation selector, and before another).
fn joins_emoji(chars: &[char], index: usize) -> bool {
    let is_emoji = |c: &char| !c.is_ascii() && c.is_emoji_char();
    let before = chars[..index]
        .iter()
        .rev()
        .find(|c| **c != '\u{FE0F}')
        .is_some_and(is_emoji);
    let after = chars.get(index + 1).is_some_and(is_emoji);
    before && after
}

/// What `c` is, if a name may not contain it.
fn unsafe_in_name(c: char) -> Option<&'static str> {
    match c.general_category() {
        GeneralCategory::Control => Some(match c {
            '\n' | '\r' | '\u{85}' => "a line break",
            '\t' => "a tab",
            _ => "a control character",
        }),
        GeneralCategory::LineSeparator => Some("a line separator"),
        GeneralCategory::ParagraphSeparator => Some("a paragraph separator"),
        GeneralCategory::Format => Some(match c {
            '\u{202D}' | '\u{202E}' => "a bidi override",
            '\u{202A}' | '\u{202B}' | '\u{202C}' => "a bidi embedding",
            '\u{2066}'..='\u{2069}' => "a bidi isolate",
            '\u{200E}' | '\u{200F}' | '\u{061C}' => "a bidi mark",
            '\u{200B}' => "a zero-width space",
            '\u{200C}' => "a zero-width non-joiner",
            '\u{200D}' => "a zero-width joiner, allowed only between emoji",
            '\u{2060}' => "a word joiner",
            '\u{FEFF}' => "a zero-width no-break space, or byte order mark",
            '\u{00AD}' => "a soft hyphen",
            '\u{E0000}'..='\u{E007F}' => "a tag character",
            _ => "an invisible formatting character",
        }),
        _ => None,
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Name {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Name::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Name {
    fn schema_name() -> Cow<'static, str> {
        "Name".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "string", "minLength": 1, "maxLength": 200})
    }
}

pub use cairn_policy::Role;

/// How an organization delivers direct care.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DirectCareSettings {
    /// Visits must be verified by the client before they count.
    pub visit_verification: bool,
    /// Clients are assigned to named staff.
    pub client_assignment: bool,
    /// The most clients one staff member may have (1 to 500).
    #[schemars(range(min = 1, max = 500))]
    #[serde(deserialize_with = "whole_number")]
    pub max_caseload: u32,
}

/// Reads a whole number, written as `20` or `20.0` (JSON Schema counts both as an
/// integer).
pub fn whole_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    let number = serde_json::Number::deserialize(deserializer)?;
    if let Some(n) = number.as_u64() {
        return u32::try_from(n).map_err(|_| serde::de::Error::custom(format!("{n} is too large")));
    }
    match number.as_f64() {
        Some(f) if f.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&f) => Ok(f as u32),
        _ => Err(serde::de::Error::custom(format!(
            "{number} is not a whole number of 0 or more"
        ))),
    }
}

impl Default for DirectCareSettings {
    fn default() -> Self {
        Self {
            visit_verification: true,
            client_assignment: true,
            max_caseload: 25,
        }
    }
}

impl DirectCareSettings {
    /// The field-level problems, if any.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if !(1..=500).contains(&self.max_caseload) {
            problems.push((
                "max_caseload",
                format!("must be 1 to 500, not {}", self.max_caseload),
            ));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        assert!(Slug::parse("sunrise-care").is_ok());
        assert!(Slug::parse("care24").is_ok());
        for (bad, fragment) in [
            ("ab", "3 to 63"),
            ("Sunrise", "not a slug"),
            ("sunrise--care", "not a slug"),
            ("-sunrise", "not a slug"),
            ("sunrise_care", "not a slug"),
        ] {
            let err = Slug::parse(bad).expect_err(bad);
            assert!(err.contains(fragment), "{bad}: {err}");
        }
    }

    #[test]
    fn input_addresses_are_ones_the_mailer_can_send_to() {
        for (input, stored) in [
            (" Ada@Example.COM ", "ada@example.com"),
            ("ada+care@example.co.uk", "ada+care@example.co.uk"),
            ("Bea@Bücher.DE", "bea@xn--bcher-kva.de"),
            ("bea@ＥＸＡＭＰＬＥ.com", "bea@example.com"),
        ] {
            assert_eq!(
                Email::parse_input(input).map(|e| e.to_string()),
                Ok(stored.to_owned()),
                "{input}"
            );
        }
        for (input, fragment) in [
            ("ada", "has no @"),
            ("\"ada lovelace\"@example.com", "quoted part before the @"),
            ("\"ada\"@example.com", "quoted part before the @"),
            ("ada@[127.0.0.1]", "not an IP address"),
            ("ada@10.0.0.1", "not an IP address"),
            ("İnci@example.com", "contains 'İ'"),
            ("josé@example.com", "contains 'é'"),
        ] {
            let err = Email::parse_input(input).expect_err(input);
            assert!(
                err.starts_with(&format!("{input:?} is not a valid email address: "))
                    && err.contains(fragment),
                "{input}: {err}"
            );
        }
        // What was stored before stays readable.
        assert!(Email::parse("josé@example.com").is_ok());
    }

    #[test]
    fn sender_addresses_need_a_known_public_suffix() {
        for (host, sender) in [
            ("mail.sunrise.example.co.uk", "noreply@example.co.uk"),
            ("mail.bench.example.co.uk", "noreply@example.co.uk"),
            ("mail.care1.example.com", "noreply@example.com"),
            ("example.com", "noreply@example.com"),
            ("care.example.com.au", "noreply@example.com.au"),
            ("notify.clinic.github.io", "noreply@clinic.github.io"),
            ("myexample.org", "noreply@myexample.org"),
        ] {
            assert_eq!(
                sender_address(host).map(|e| e.to_string()),
                Ok(sender.to_owned()),
                "{host}"
            );
        }
        for (host, fragment) in [
            ("127.0.0.1", "is an IP address"),
            ("[::1]", "is an IP address"),
            ("fe80::1", "is an IP address"),
            (
                "mail.example.notatld",
                "ends in .notatld, which is not a known public suffix",
            ),
            (
                "mail.example.123",
                "ends in .123, which is not a known public suffix",
            ),
            (
                "foo.localhost",
                "ends in .localhost, which is reserved for this machine",
            ),
            ("printer.local", "ends in .local, which is reserved"),
            ("a.test", "ends in .test, which is reserved"),
            ("a.invalid", "ends in .invalid, which is reserved"),
            (
                "mail.sunrise.example",
                "ends in .example, which is reserved",
            ),
            ("x.onion", "ends in .onion, which is reserved"),
            ("svc.internal", "ends in .internal, which is reserved"),
            (
                "nas.home.arpa",
                "ends in .home.arpa, which is reserved for home networks",
            ),
            ("4.3.2.1.in-addr.arpa", "ends in .arpa, which is reserved"),
            ("co.uk", "itself a public suffix"),
            ("bad_host.example.com", "each label"),
        ] {
            let err = sender_address(host).expect_err(host);
            assert!(err.contains(fragment), "{host}: {err}");
        }
    }

    #[test]
    fn input_names_refuse_invisible_and_line_breaking_characters() {
        for name in [
            "Ada Lovelace",
            "José Ñúñez-Ångström",
            "李小龍",
            "نور الهدى",
            "Zoë O'Brien",
            "\u{1F469}\u{200D}\u{1F4BB} Dev",
            "\u{1F3F3}\u{FE0F}\u{200D}\u{1F308}",
            "\u{1F468}\u{1F3FD}\u{200D}\u{2695}\u{FE0F} Dr Who",
            "Ada\u{00A0}Lovelace",
        ] {
            assert_eq!(
                Name::parse_input(name).map(|n| n.to_string()),
                Ok(name.to_owned())
            );
        }
        for (name, code, what, at) in [
            ("Sun\u{202E}rise", "U+202E", "a bidi override", 4),
            ("\u{202A}x", "U+202A", "a bidi embedding", 1),
            ("x\u{2067}y\u{2069}", "U+2067", "a bidi isolate", 2),
            ("Ada\u{200E}", "U+200E", "a bidi mark", 4),
            ("Ada\u{200B}", "U+200B", "a zero-width space", 4),
            ("Ada\u{200C}x", "U+200C", "a zero-width non-joiner", 4),
            (
                "a\u{200D}b",
                "U+200D",
                "a zero-width joiner, allowed only between emoji",
                2,
            ),
            ("\u{200D}\u{1F4BB}", "U+200D", "a zero-width joiner", 1),
            ("\u{FEFF}Ada", "U+FEFF", "a zero-width no-break space", 1),
            ("Ada\u{2028}Byron", "U+2028", "a line separator", 4),
            ("Ada\u{2029}Byron", "U+2029", "a paragraph separator", 4),
            ("Ada\nByron", "U+000A", "a line break", 4),
            ("Ada\u{7}", "U+0007", "a control character", 4),
            ("Ad\u{00AD}a", "U+00AD", "a soft hyphen", 3),
            ("Ada\u{E0041}", "U+E0041", "a tag character", 4),
            (
                "Ada\u{2063}",
                "U+2063",
                "an invisible formatting character",
                4,
            ),
        ] {
            let err = Name::parse_input(name).expect_err(name);
            assert!(
                err.starts_with(&format!("contains {code} ({what}"))
                    && err.contains(&format!(") at character {at};")),
                "{name:?}: {err}"
            );
        }
        assert!(Name::parse_input("   ").is_err());
        // What was stored before stays readable.
        assert!(Name::parse("Sun\u{202E}rise").is_ok());
    }

    /// The characters of a negated class `[^…]` of [`NAME_PATTERN`], written with
    /// `\xNN` and `\uNNNN` escapes and ranges (`\s` aside).
    fn negated_class(class: &str) -> std::collections::BTreeSet<char> {
        let mut chars = Vec::new();
        let mut rest = class;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix("\\s") {
                rest = after;
                continue;
            }
            if let Some(after) = rest.strip_prefix('-') {
                chars.push(None);
                rest = after;
                continue;
            }
            let (digits, after) = if let Some(after) = rest.strip_prefix("\\x") {
                after.split_at(2)
            } else if let Some(after) = rest.strip_prefix("\\u") {
                after.split_at(4)
            } else {
                panic!("unexpected text in the class: {rest}")
            };
            let code = u32::from_str_radix(digits, 16).expect("hex digits");
            chars.push(Some(char::from_u32(code).expect("a character")));
            rest = after;
        }
        let mut set = std::collections::BTreeSet::new();
        let mut index = 0;
        while index < chars.len() {
            let first = chars[index].expect("a range starts with a character");
            if chars.get(index + 1) == Some(&None) {
                let last = chars[index + 2].expect("a range ends with a character");
                set.extend(first..=last);
                index += 3;
            } else {
                set.insert(first);
                index += 1;
            }
        }
        set
    }

    #[test]
    fn the_name_pattern_refuses_what_the_server_refuses_below_u_ffff() {
        let classes: Vec<&str> = NAME_PATTERN
            .split("[^")
            .skip(1)
            .map(|part| part.split(']').next().expect("a closed class"))
            .collect();
        assert_eq!(classes.len(), 3);
        let refused: std::collections::BTreeSet<char> = ('\0'..='\u{FFFF}')
            .filter(|c| *c != '\u{200D}' && unsafe_in_name(*c).is_some())
            .collect();
        for class in classes {
            assert_eq!(negated_class(class), refused, "{class}");
        }
    }

    #[test]
    fn names_and_roles() {
        assert_eq!(
            Name::parse("  Ada  ").map(|n| n.to_string()),
            Ok("Ada".into())
        );
        assert!(Name::parse("   ").is_err());
        assert!(Name::parse(&"x".repeat(201)).is_err());
        assert_eq!(Role::parse("clinician"), Ok(Role::Clinician));
        assert!(
            Role::parse("nurse")
                .expect_err("unknown")
                .contains("the roles are admin")
        );
        let err = serde_json::from_str::<Role>("\"nurse\"").expect_err("unknown role");
        assert!(err.to_string().contains("unknown variant `nurse`"), "{err}");
    }
}
