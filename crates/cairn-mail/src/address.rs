//! Email addresses and registrable domains.

use std::fmt;
use std::str::FromStr;

/// A syntactically valid email address, stored lower-case.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EmailAddress(String);

/// Text that is not an email address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a valid email address: {reason}")]
pub struct EmailError {
    pub input: String,
    pub reason: String,
}

impl EmailAddress {
    /// Checks the syntax (RFC 5321 limits, a domain with a dot) and lower-cases it.
    pub fn parse(input: &str) -> Result<Self, EmailError> {
        let error = |reason: &str| EmailError {
            input: input.to_owned(),
            reason: reason.to_owned(),
        };
        let trimmed = input.trim();
        if trimmed.len() > 254 {
            return Err(error("it is longer than 254 characters"));
        }
        let Some((local, domain)) = trimmed.rsplit_once('@') else {
            return Err(error("it has no @"));
        };
        if local.is_empty() || local.len() > 64 {
            return Err(error("the part before the @ must be 1 to 64 characters"));
        }
        if !domain.contains('.') || domain.starts_with('.') || domain.ends_with('.') {
            return Err(error("the domain must have a dot, and not at either end"));
        }
        let address: lettre::Address = trimmed
            .parse()
            .map_err(|e: lettre::address::AddressError| error(&e.to_string()))?;
        Ok(Self(address.to_string().to_lowercase()))
    }

    /// The address as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part after the @.
    pub fn domain(&self) -> &str {
        self.0.rsplit_once('@').map_or("", |(_, domain)| domain)
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for EmailAddress {
    type Err = EmailError;
    fn from_str(input: &str) -> Result<Self, EmailError> {
        Self::parse(input)
    }
}

/// A host name without a registrable domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{host:?} has no registrable domain: {reason}")]
pub struct DomainError {
    pub host: String,
    pub reason: String,
}

/// The registrable ("parent") domain of a host, by the Public Suffix List:
/// `mail.clinic.example.co.uk` → `example.co.uk`.
///
/// ```
/// use cairn_mail::registrable_domain;
///
/// assert_eq!(registrable_domain("mail.clinic.example.co.uk").unwrap(), "example.co.uk");
/// assert_eq!(registrable_domain("clinic.example.com.au").unwrap(), "example.com.au");
/// assert_eq!(registrable_domain("notify.example.com").unwrap(), "example.com");
/// assert!(registrable_domain("co.uk").is_err());
/// ```
pub fn registrable_domain(host: &str) -> Result<String, DomainError> {
    let error = |reason: &str| DomainError {
        host: host.to_owned(),
        reason: reason.to_owned(),
    };
    let host = host.trim().trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() || host.len() > 253 {
        return Err(error("a host name is 1 to 253 characters"));
    }
    let labels_ok = host.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    });
    if !labels_ok {
        return Err(error(
            "each label is 1 to 63 letters, digits or hyphens, not starting or ending with a hyphen",
        ));
    }
    let Some(suffix) = psl::suffix_str(&host) else {
        return Err(error("its ending is not a known public suffix"));
    };
    if suffix == host {
        return Err(error(
            "it is itself a public suffix, under which anyone can register",
        ));
    }
    match psl::domain_str(&host) {
        Some(domain) => Ok(domain.to_owned()),
        None => Err(error("no registrable domain under its public suffix")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_domains_follow_the_public_suffix_list() {
        let cases = [
            ("noreply.example.com", Ok("example.com")),
            ("example.com", Ok("example.com")),
            ("clinic.example.co.uk", Ok("example.co.uk")),
            ("a.b.clinic.example.co.uk", Ok("example.co.uk")),
            ("care.example.com.au", Ok("example.com.au")),
            ("mail.example.org.nz", Ok("example.org.nz")),
            ("MAIL.Example.COM.", Ok("example.com")),
            ("co.uk", Err("itself a public suffix")),
            ("com", Err("itself a public suffix")),
            ("bad_host.example.com", Err("each label")),
            ("-x.example.com", Err("each label")),
            ("", Err("1 to 253")),
        ];
        for (host, expect) in cases {
            match (registrable_domain(host), expect) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{host}"),
                (Err(err), Err(fragment)) => {
                    assert!(err.to_string().contains(fragment), "{host}: {err}")
                }
                (got, want) => panic!("{host}: got {got:?}, expected {want:?}"),
            }
        }
    }

    #[test]
    fn the_seed_bug_cannot_happen() {
        // `.split('.').slice(-2).join('.')` gives "co.uk" here.
        assert_eq!(
            registrable_domain("noreply.clinic.example.co.uk").as_deref(),
            Ok("example.co.uk")
        );
    }

    #[test]
    fn email_addresses_are_checked_and_lower_cased() {
        assert_eq!(
            EmailAddress::parse(" Ada@Example.COM ").map(|a| a.to_string()),
            Ok("ada@example.com".into())
        );
        for (input, fragment) in [
            ("ada", "has no @"),
            ("@example.com", "before the @"),
            ("ada@localhost", "must have a dot"),
            ("ada@example.com.", "must have a dot, and not at either end"),
            ("a b@example.com", "not a valid email address"),
        ] {
            let err = EmailAddress::parse(input).expect_err(input);
            assert!(err.to_string().contains(fragment), "{input}: {err}");
        }
    }
}
