//! Input the mailer cannot use is refused when it arrives, on both backends: email
//! addresses the mailer cannot send to, sender domains without a real public suffix,
//! and names holding invisible or line-breaking characters. And the two dead ends such
//! input used to lead to have a way out: a failed bootstrap lets go of its slug, and an
//! invitation the mail server refused is recorded, to be sent to a corrected address or
//! withdrawn.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use cairn_domain::queries::{self, Page};
use cairn_domain::{
    AddressCorrection, BootstrapRequest, CommandContext, CommandError, InviteeRequest,
};
use cairn_log::args;
use cairn_mail::{Delivery, MailError, Mailer, OutboundMessage, SmtpMailer};
use cairn_policy::Principal;
use cairn_testkit::{Backend, SinkOptions, SmtpSink, TestDb, backend_test};
use cairn_types::OrgId;
use cairn_workflow::{ManualClock, RunStatus, SystemClock};
use serde_json::json;

use crate::common::{
    World, admin_actor, assert_no_drift, organization, smtp_world, token_in, workflow_status, world,
};

/// Sends through an SMTP server, except to the recipients it is told to refuse, which
/// it refuses for good, as a server answering 550 does.
struct Refusing {
    inner: SmtpMailer,
    refuse: Mutex<Vec<String>>,
}

impl Refusing {
    fn refuse(&self, recipients: &[&str]) {
        if let Ok(mut refuse) = self.refuse.lock() {
            *refuse = recipients.iter().map(|r| (*r).to_owned()).collect();
        }
    }
}

#[async_trait]
impl Mailer for Refusing {
    async fn send(&self, message: &OutboundMessage) -> Result<Delivery, MailError> {
        let refused = self.refuse.lock().is_ok_and(|refuse| {
            refuse
                .iter()
                .any(|r| message.to.as_str().contains(r.as_str()))
        });
        if refused {
            return Err(MailError::permanent(format!(
                "550 5.1.1 <{}>: mailbox unavailable",
                message.to
            )));
        }
        self.inner.send(message).await
    }

    fn describe(&self) -> String {
        format!("refusing {}", self.inner.describe())
    }
}

fn request_with(slug: &str, admin_email: &str) -> BootstrapRequest {
    serde_json::from_value(json!({
        "organization": {"name": "Sunrise Care", "slug": slug, "sender_domain": "mail.sunrise.example.co.uk"},
        "admin": {"email": admin_email, "name": "Ada Lovelace"},
        "invitees": [
            {"email": "grace@example.com", "name": "Grace Hopper", "roles": ["clinician"]},
            {"email": "alan@example.org", "name": "Alan Turing", "roles": ["coordinator", "viewer"]}
        ]
    }))
    .expect("a well-formed request")
}

fn request(slug: &str) -> BootstrapRequest {
    request_with(slug, "ada@example.com")
}

fn invitee(email: &str, name: &str, roles: &[&str]) -> InviteeRequest {
    InviteeRequest {
        email: email.into(),
        name: name.into(),
        roles: roles.iter().map(|r| (*r).to_owned()).collect(),
    }
}

/// A bootstrapped, active organization.
async fn active_org(w: &World, slug: &str) -> anyhow::Result<OrgId> {
    let accepted = w.domain.bootstrap(&admin_actor(), &request(slug)).await?;
    w.domain.engine().run_until_idle().await?;
    assert_eq!(
        workflow_status(w, accepted.workflow_id).await?,
        RunStatus::Completed
    );
    Ok(accepted.org_id)
}

async fn count(w: &World, table: &str) -> anyhow::Result<i64> {
    let sql = format!("SELECT COUNT(*) AS n FROM {table}");
    Ok(w.t
        .db()
        .reader()
        .await?
        .conn()
        .fetch_one(cairn_log::Sql::built(sql), args![])
        .await?
        .get::<i64>("n")?)
}

/// The field errors of a command refused as invalid.
fn field_errors(result: Result<impl std::fmt::Debug, CommandError>) -> Vec<(String, String)> {
    match result {
        Err(CommandError::Invalid(fields)) => {
            fields.into_iter().map(|f| (f.field, f.message)).collect()
        }
        other => panic!("expected the command to be refused as invalid, got {other:?}"),
    }
}

backend_test!(
    addresses_the_mailer_cannot_send_to_are_refused_at_the_door,
    |t: TestDb| async move {
        let sink = SmtpSink::start(SinkOptions::default()).await?;
        let w = smtp_world(t, &sink).await?;
        let bad: BootstrapRequest = serde_json::from_value(json!({
            "organization": {"name": "Sunrise Care", "slug": "sunrise-door", "sender_domain": "mail.sunrise.example.co.uk"},
            "admin": {"email": "\"ada lovelace\"@example.com", "name": "Ada Lovelace"},
            "invitees": [
                {"email": "grace@[127.0.0.1]", "name": "Grace Hopper", "roles": ["clinician"]},
                {"email": "İnci@example.com", "name": "İnci Yılmaz", "roles": ["viewer"]},
                {"email": "josé@example.com", "name": "José Ñúñez", "roles": ["viewer"]},
                {"email": "alan@10.0.0.1", "name": "Alan Turing", "roles": ["viewer"]},
                {"email": "edsger@example.com", "name": "Edsger Dijkstra", "roles": ["viewer"]}
            ]
        }))?;
        let fields = field_errors(w.domain.bootstrap(&admin_actor(), &bad).await);
        let named: Vec<&str> = fields.iter().map(|(field, _)| field.as_str()).collect();
        assert_eq!(
            named,
            [
                "admin.email",
                "invitees[0].email",
                "invitees[1].email",
                "invitees[2].email",
                "invitees[3].email",
            ],
            "{fields:#?}"
        );
        for (fragment, (field, message)) in [
            "quoted part before the @",
            "not an IP address",
            "only ASCII letters",
            "only ASCII letters",
            "not an IP address",
        ]
        .iter()
        .zip(&fields)
        {
            assert!(
                message.contains("is not a valid email address") && message.contains(fragment),
                "{field}: {message}"
            );
        }
        assert_eq!(count(&w, "organizations").await?, 0, "nothing was written");

        // The same for an invitation to an organization that is up and running.
        let org_id = active_org(&w, "sunrise-door").await?;
        for email in ["\"bea x\"@example.com", "bea@[10.0.0.1]", "béa@example.com"] {
            let fields = field_errors(
                w.domain
                    .invite(&admin_actor(), org_id, &invitee(email, "Bea", &["viewer"]))
                    .await,
            );
            assert_eq!(fields.len(), 1, "{email}: {fields:?}");
            assert_eq!(fields[0].0, "email");
            assert!(
                fields[0]
                    .1
                    .starts_with(&format!("{email:?} is not a valid email address: ")),
                "{}",
                fields[0].1
            );
        }
        assert_eq!(count(&w, "users").await?, 3, "no one was added");
        assert_eq!(sink.messages().len(), 3);
        Ok(())
    }
);

backend_test!(
    an_international_domain_is_kept_and_mailed_in_its_ascii_form,
    |t: TestDb| async move {
        let sink = SmtpSink::start(SinkOptions::default()).await?;
        let w = smtp_world(t, &sink).await?;
        let org_id = active_org(&w, "sunrise-idna").await?;
        let started = w
            .domain
            .invite(
                &admin_actor(),
                org_id,
                &invitee("Bea@Bücher.DE", "Bea Schmidt", &["viewer"]),
            )
            .await?;
        w.domain.engine().run_until_idle().await?;
        assert_eq!(
            workflow_status(&w, started.workflow_id).await?,
            RunStatus::Completed,
            "sent through a server without SMTPUTF8"
        );
        let mut reader = w.t.db().reader().await?;
        let user = queries::user(&mut reader.conn(), started.user_id)
            .await?
            .expect("the invitee");
        assert_eq!(user.email, "bea@xn--bcher-kva.de");
        let invitation = queries::invitation(&mut reader.conn(), started.invitation_id)
            .await?
            .expect("sent");
        assert_eq!(
            (invitation.email.as_str(), invitation.status.as_str()),
            ("bea@xn--bcher-kva.de", "pending")
        );
        drop(reader);
        assert!(
            sink.messages()
                .iter()
                .any(|m| m.to.contains("bea@xn--bcher-kva.de")),
            "mailed to the ASCII form"
        );

        // The Unicode spelling is the same person.
        let err = w
            .domain
            .invite(
                &admin_actor(),
                org_id,
                &invitee("bea@bücher.de", "Bea", &["viewer"]),
            )
            .await
            .expect_err("the same address");
        assert!(
            matches!(&err, CommandError::Conflict(field) if field.message.contains("already been invited")),
            "{err:?}"
        );
        Ok(())
    }
);

backend_test!(
    sender_domains_must_end_in_a_known_public_suffix,
    |t: TestDb| async move {
        let sink = SmtpSink::start(SinkOptions::default()).await?;
        let w = smtp_world(t, &sink).await?;
        let with_domain = |slug: &str, domain: &str| -> anyhow::Result<BootstrapRequest> {
            let mut request = request(slug);
            request.organization.sender_domain = domain.to_owned();
            Ok(request)
        };
        for (domain, fragment) in [
            ("127.0.0.1", "is an IP address"),
            ("[::1]", "is an IP address"),
            ("::1", "is an IP address"),
            (
                "mail.example.notatld",
                "ends in .notatld, which is not a known public suffix",
            ),
            ("foo.localhost", "ends in .localhost, which is reserved"),
            ("localhost", "ends in .localhost, which is reserved"),
            ("mail.clinic.local", "ends in .local, which is reserved"),
            ("mail.sunrise.test", "ends in .test, which is reserved"),
            (
                "mail.sunrise.invalid",
                "ends in .invalid, which is reserved",
            ),
            (
                "mail.sunrise.example",
                "ends in .example, which is reserved",
            ),
            ("hidden.onion", "ends in .onion, which is reserved"),
            ("mail.corp.internal", "ends in .internal, which is reserved"),
            ("printer.home.arpa", "ends in .home.arpa, which is reserved"),
            ("1.0.0.127.in-addr.arpa", "ends in .arpa, which is reserved"),
            ("mail.example.123", "not a known public suffix"),
            ("co.uk", "itself a public suffix"),
        ] {
            let fields = field_errors(
                w.domain
                    .bootstrap(&admin_actor(), &with_domain("sunrise-domain", domain)?)
                    .await,
            );
            assert_eq!(fields.len(), 1, "{domain}: {fields:?}");
            assert_eq!(fields[0].0, "organization.sender_domain", "{domain}");
            assert!(fields[0].1.contains(fragment), "{domain}: {}", fields[0].1);
        }
        assert_eq!(count(&w, "organizations").await?, 0, "nothing was written");

        for (slug, domain, sender) in [
            (
                "sunrise-uk",
                "mail.sunrise.example.co.uk",
                "noreply@example.co.uk",
            ),
            ("care-one", "mail.care1.example.com", "noreply@example.com"),
            (
                "bench-uk",
                "Mail.Bench.Example.CO.UK.",
                "noreply@example.co.uk",
            ),
            (
                "clinic-au",
                "clinic.example.com.au",
                "noreply@example.com.au",
            ),
        ] {
            let accepted = w
                .domain
                .bootstrap(&admin_actor(), &with_domain(slug, domain)?)
                .await?;
            w.domain.engine().run_until_idle().await?;
            assert_eq!(
                organization(&w, accepted.org_id).await?.sender_address,
                sender,
                "{domain}"
            );
        }
        Ok(())
    }
);

backend_test!(
    names_with_invisible_or_line_breaking_characters_are_refused,
    |t: TestDb| async move {
        let sink = SmtpSink::start(SinkOptions::default()).await?;
        let w = smtp_world(t, &sink).await?;
        let bad: BootstrapRequest = serde_json::from_value(json!({
            "organization": {"name": "Sun\u{202E}rise Care", "slug": "sunrise-names", "sender_domain": "mail.sunrise.example.co.uk"},
            "admin": {"email": "ada@example.com", "name": "Ada\u{200B}Lovelace"},
            "invitees": [
                {"email": "grace@example.com", "name": "Grace\u{2028}Hopper", "roles": ["clinician"]},
                {"email": "alan@example.org", "name": "\u{FEFF}Alan Turing", "roles": ["viewer"]},
                {"email": "edsger@example.com", "name": "Edsger \u{2066}Dijkstra\u{2069}", "roles": ["viewer"]},
                {"email": "barbara@example.com", "name": "Barbara\u{200D}Liskov", "roles": ["viewer"]}
            ]
        }))?;
        let fields = field_errors(w.domain.bootstrap(&admin_actor(), &bad).await);
        let expected = [
            (
                "organization.name",
                "contains U+202E (a bidi override) at character 4",
            ),
            (
                "admin.name",
                "contains U+200B (a zero-width space) at character 4",
            ),
            (
                "invitees[0].name",
                "contains U+2028 (a line separator) at character 6",
            ),
            (
                "invitees[1].name",
                "contains U+FEFF (a zero-width no-break space, or byte order mark) at character 1",
            ),
            (
                "invitees[2].name",
                "contains U+2066 (a bidi isolate) at character 8",
            ),
            (
                "invitees[3].name",
                "contains U+200D (a zero-width joiner, allowed only between emoji) at character 8",
            ),
        ];
        assert_eq!(fields.len(), expected.len(), "{fields:#?}");
        for ((field, message), (want_field, want)) in fields.iter().zip(expected) {
            assert_eq!(field, want_field);
            assert!(message.starts_with(want), "{field}: {message}");
        }
        assert_eq!(count(&w, "organizations").await?, 0, "nothing was written");

        let org_id = active_org(&w, "sunrise-names").await?;
        let fields = field_errors(
            w.domain
                .invite(
                    &admin_actor(),
                    org_id,
                    &invitee("eve@example.com", "Eve\u{200F}", &["viewer"]),
                )
                .await,
        );
        assert_eq!(
            fields,
            [(
                "name".to_owned(),
                "contains U+200F (a bidi mark) at character 4; a name may not hold control characters, invisible formatting characters or line separators".to_owned()
            )]
        );

        // Letters of every script, accents and emoji, joined ones included, are names.
        for (email, name) in [
            ("jose@example.com", "José Ñúñez-Ångström"),
            ("li@example.com", "李小龍"),
            ("zoe@example.com", "Zoë O'Brien"),
            ("coder@example.com", "\u{1F469}\u{200D}\u{1F4BB} Dev"),
            (
                "pride@example.com",
                "\u{1F3F3}\u{FE0F}\u{200D}\u{1F308} Pride",
            ),
            ("noor@example.com", "نور الهدى"),
        ] {
            let started = w
                .domain
                .invite(&admin_actor(), org_id, &invitee(email, name, &["viewer"]))
                .await?;
            let mut reader = w.t.db().reader().await?;
            let user = queries::user(&mut reader.conn(), started.user_id)
                .await?
                .expect("invited");
            assert_eq!(user.name, name);
        }
        Ok(())
    }
);

backend_test!(
    a_failed_bootstrap_lets_go_of_its_slug,
    |t: TestDb| async move {
        let sink = SmtpSink::start(SinkOptions {
            refuse: Some("550 5.1.1 Mailbox unavailable".into()),
            refuse_to: Some("ada@".into()),
            ..SinkOptions::default()
        })
        .await?;
        let w = smtp_world(t, &sink).await?;
        let first = w
            .domain
            .bootstrap(&admin_actor(), &request("sunrise-again"))
            .await?;
        w.domain.engine().run_until_idle().await?;
        assert_eq!(
            workflow_status(&w, first.workflow_id).await?,
            RunStatus::Failed
        );
        let failed = organization(&w, first.org_id).await?;
        assert_eq!(
            (failed.status.as_str(), failed.is_active),
            ("failed", false)
        );

        // The same slug, with an admin whose mail goes through.
        let second = w
            .domain
            .bootstrap(
                &admin_actor(),
                &request_with("sunrise-again", "bea@example.com"),
            )
            .await?;
        assert_ne!(second.org_id, first.org_id);
        w.domain.engine().run_until_idle().await?;
        assert_eq!(
            workflow_status(&w, second.workflow_id).await?,
            RunStatus::Completed
        );
        let org = organization(&w, second.org_id).await?;
        assert_eq!(
            (org.slug.as_str(), org.status.as_str(), org.is_active),
            ("sunrise-again", "active", true)
        );
        let failed = organization(&w, first.org_id).await?;
        assert_eq!(
            (failed.slug.as_str(), failed.status.as_str()),
            ("sunrise-again", "failed"),
            "the failed one is still there to look at"
        );

        // Now the live organization holds it.
        let err = w
            .domain
            .bootstrap(
                &admin_actor(),
                &request_with("sunrise-again", "cy@example.com"),
            )
            .await
            .expect_err("taken");
        assert!(
            matches!(&err, CommandError::Conflict(field)
                if field.field == "organization.slug" && field.message.contains("is taken")),
            "{err:?}"
        );
        // Rebuilt from the log, the projections are the same.
        assert_no_drift(&w).await?;
        Ok(())
    }
);

/// Makes updates that deactivate an organization fail, and the log refuse
/// `organization.deactivated` events: the bootstrap's compensation then cannot finish.
async fn block_deactivation(t: &TestDb) -> anyhow::Result<()> {
    let script = match t.backend() {
        Backend::Sqlite => "CREATE TRIGGER refuse_deactivation BEFORE INSERT ON domain_events
             WHEN NEW.event_type = 'organization.deactivated'
             BEGIN SELECT RAISE(ABORT, 'the disk is on fire'); END;
             CREATE TRIGGER keep_active BEFORE UPDATE ON organizations
             WHEN NEW.is_active = 0 AND OLD.is_active = 1
             BEGIN SELECT RAISE(ABORT, 'the disk is on fire'); END;"
            .to_owned(),
        Backend::Postgres => "CREATE FUNCTION on_fire() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN RAISE EXCEPTION 'the disk is on fire'; END $$;
             CREATE TRIGGER refuse_deactivation BEFORE INSERT ON domain_events FOR EACH ROW
             WHEN (NEW.event_type = 'organization.deactivated') EXECUTE FUNCTION on_fire();
             CREATE TRIGGER keep_active BEFORE UPDATE ON organizations FOR EACH ROW
             WHEN (OLD.is_active AND NOT NEW.is_active) EXECUTE FUNCTION on_fire();"
            .to_owned(),
    };
    let mut tx = t.db().begin().await?;
    tx.conn()
        .execute_script(cairn_log::Sql::built(script))
        .await?;
    tx.commit().await?;
    Ok(())
}

async fn unblock_deactivation(t: &TestDb) -> anyhow::Result<()> {
    let script = match t.backend() {
        Backend::Sqlite => "DROP TRIGGER refuse_deactivation; DROP TRIGGER keep_active;",
        Backend::Postgres => {
            "DROP TRIGGER refuse_deactivation ON domain_events;
             DROP TRIGGER keep_active ON organizations; DROP FUNCTION on_fire();"
        }
    };
    let mut tx = t.db().begin().await?;
    tx.conn()
        .execute_script(cairn_log::Sql::built(script.to_owned()))
        .await?;
    tx.commit().await?;
    Ok(())
}

backend_test!(
    a_failed_bootstrap_holds_its_slug_until_it_is_undone,
    |t: TestDb| async move {
        let sink = SmtpSink::start(SinkOptions {
            refuse: Some("550 5.1.1 Mailbox unavailable".into()),
            refuse_to: Some("ada@".into()),
            ..SinkOptions::default()
        })
        .await?;
        let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
        let w = world(
            t,
            Arc::new(SmtpMailer::from_url(&sink.url())?),
            clock.clone(),
        )
        .await?;
        block_deactivation(&w.t).await?;
        let first = w
            .domain
            .bootstrap(&admin_actor(), &request("sunrise-undo"))
            .await?;
        w.domain.engine().run_until_idle().await?;
        assert_eq!(
            workflow_status(&w, first.workflow_id).await?,
            RunStatus::Compensating
        );
        let stuck = organization(&w, first.org_id).await?;
        assert_eq!((stuck.status.as_str(), stuck.is_active), ("failed", true));
        let err = w
            .domain
            .bootstrap(
                &admin_actor(),
                &request_with("sunrise-undo", "bea@example.com"),
            )
            .await
            .expect_err("still held");
        assert!(
            matches!(&err, CommandError::Conflict(field)
                if field.field == "organization.slug" && field.message.contains("being undone")),
            "{err:?}"
        );

        unblock_deactivation(&w.t).await?;
        clock.advance(chrono::Duration::hours(1));
        w.domain.engine().run_until_idle().await?;
        assert_eq!(
            workflow_status(&w, first.workflow_id).await?,
            RunStatus::Failed
        );
        let second = w
            .domain
            .bootstrap(
                &admin_actor(),
                &request_with("sunrise-undo", "bea@example.com"),
            )
            .await?;
        w.domain.engine().run_until_idle().await?;
        assert_eq!(
            workflow_status(&w, second.workflow_id).await?,
            RunStatus::Completed
        );
        Ok(())
    }
);

backend_test!(
    a_refused_invitation_is_recorded_and_goes_to_a_corrected_address,
    |t: TestDb| async move {
        let sink = SmtpSink::start(SinkOptions::default()).await?;
        let mailer = Arc::new(Refusing {
            inner: SmtpMailer::from_url(&sink.url())?,
            refuse: Mutex::new(Vec::new()),
        });
        let w = world(t, mailer.clone(), Arc::new(SystemClock)).await?;
        let org_id = active_org(&w, "sunrise-retry").await?;

        mailer.refuse(&["bea@"]);
        let first = w
            .domain
            .invite(
                &admin_actor(),
                org_id,
                &invitee("bea@example.com", "Bea", &["viewer"]),
            )
            .await?;
        w.domain.engine().run_until_idle().await?;
        // The refusal is the delivery's outcome, recorded on the invitation: not a
        // failed run for an operator to find.
        assert_eq!(
            workflow_status(&w, first.workflow_id).await?,
            RunStatus::Completed
        );
        let mut reader = w.t.db().reader().await?;
        let refused = queries::invitation(&mut reader.conn(), first.invitation_id)
            .await?
            .expect("the refused invitation is recorded");
        assert_eq!(
            (
                refused.status.as_str(),
                refused.email.as_str(),
                refused.delivery_reply.as_deref(),
                refused.send_count,
            ),
            (
                "refused",
                "bea@example.com",
                Some("550 5.1.1 <<recipient>>: mailbox unavailable"),
                1
            ),
            "what the server said, the address cut out"
        );
        assert!(refused.refused_at.is_some());
        let bea = queries::user(&mut reader.conn(), first.user_id)
            .await?
            .expect("bea");
        assert_eq!(bea.status, "invited");
        drop(reader);

        // Inviting the same address again would bounce again: it is refused, saying
        // what to do instead; so is a plain resend.
        let err = w
            .domain
            .invite(
                &admin_actor(),
                org_id,
                &invitee("bea@example.com", "Bea", &["viewer"]),
            )
            .await
            .expect_err("refused before");
        assert!(
            matches!(&err, CommandError::Conflict(field)
                if field.message.contains("was refused by the mail server (550 5.1.1")
                    && field.message.contains("to a corrected address, or withdraw it")),
            "{err:?}"
        );
        let err = w
            .domain
            .resend_invitation(&admin_actor(), first.invitation_id)
            .await
            .expect_err("refused before");
        assert!(
            err.to_string().contains("send it to a corrected address"),
            "{err}"
        );
        // Another person's address, and an address that is none, are refused.
        let taken = w
            .domain
            .correct_invitation_address(
                &admin_actor(),
                first.invitation_id,
                &AddressCorrection {
                    email: "grace@example.com".into(),
                },
            )
            .await
            .expect_err("grace's");
        assert!(
            matches!(&taken, CommandError::Conflict(field)
                if field.field == "email" && field.message.contains("someone else's address")),
            "{taken:?}"
        );
        assert_eq!(
            field_errors(
                w.domain
                    .correct_invitation_address(
                        &admin_actor(),
                        first.invitation_id,
                        &AddressCorrection {
                            email: "bea at example".into(),
                        },
                    )
                    .await
            )
            .first()
            .map(|(field, _)| field.as_str()),
            Some("email")
        );

        // The corrected address works: the invitation goes there, and is accepted.
        let corrected = w
            .domain
            .correct_invitation_address(
                &admin_actor(),
                first.invitation_id,
                &AddressCorrection {
                    email: "Bea.Schmidt@example.com".into(),
                },
            )
            .await?;
        assert_eq!(
            (corrected.invitation_id, corrected.user_id),
            (first.invitation_id, first.user_id)
        );
        w.domain.engine().run_until_idle().await?;
        assert_eq!(
            workflow_status(&w, corrected.workflow_id).await?,
            RunStatus::Completed
        );
        let mut reader = w.t.db().reader().await?;
        let pending = queries::invitation(&mut reader.conn(), first.invitation_id)
            .await?
            .expect("the invitation");
        assert_eq!(
            (
                pending.status.as_str(),
                pending.email.as_str(),
                pending.delivery_reply.as_deref(),
                pending.send_count
            ),
            ("pending", "bea.schmidt@example.com", None, 2)
        );
        drop(reader);
        let message = sink
            .messages()
            .into_iter()
            .find(|m| m.to.contains("bea.schmidt@"))
            .expect("mailed to the corrected address");
        let accepted = w
            .domain
            .accept_invitation(
                &CommandContext::new(Principal::Anonymous),
                &token_in(&message),
            )
            .await?;
        assert_eq!(accepted.user_id, first.user_id);
        let mut reader = w.t.db().reader().await?;
        let bea = queries::user(&mut reader.conn(), first.user_id)
            .await?
            .expect("bea");
        assert_eq!(
            (bea.status.as_str(), bea.email.as_str()),
            ("active", "bea.schmidt@example.com")
        );
        drop(reader);

        // A refused invitation can be withdrawn instead; then the address may be
        // invited again.
        mailer.refuse(&["cy@"]);
        let cy = w
            .domain
            .invite(
                &admin_actor(),
                org_id,
                &invitee("cy@example.com", "Cy", &["viewer"]),
            )
            .await?;
        w.domain.engine().run_until_idle().await?;
        w.domain
            .revoke_invitation(&admin_actor(), cy.invitation_id, "no such mailbox")
            .await?;
        mailer.refuse(&[]);
        let again = w
            .domain
            .invite(
                &admin_actor(),
                org_id,
                &invitee("cy@example.com", "Cy", &["viewer"]),
            )
            .await?;
        assert_eq!(again.user_id, cy.user_id, "the same person");
        w.domain.engine().run_until_idle().await?;
        let mut reader = w.t.db().reader().await?;
        let statuses: Vec<String> = queries::invitations_of_user(&mut reader.conn(), cy.user_id)
            .await?
            .into_iter()
            .map(|i| i.status)
            .collect();
        assert_eq!(statuses, ["revoked", "pending"]);
        drop(reader);

        // Rebuilt from the log, the projections are the same.
        assert_no_drift(&w).await?;
        Ok(())
    }
);

backend_test!(
    an_invitee_whose_invitation_was_revoked_can_be_invited_again,
    |t: TestDb| async move {
        let sink = SmtpSink::start(SinkOptions::default()).await?;
        let w = smtp_world(t, &sink).await?;
        let org_id = active_org(&w, "sunrise-revoked").await?;
        let mut reader = w.t.db().reader().await?;
        let grace = queries::invitations(&mut reader.conn(), org_id, Page::default())
            .await?
            .into_iter()
            .find(|i| i.email == "grace@example.com")
            .expect("grace's invitation");
        drop(reader);
        w.domain
            .revoke_invitation(&admin_actor(), grace.id, "sent to the wrong team")
            .await?;

        let again = w
            .domain
            .invite(
                &admin_actor(),
                org_id,
                &invitee("grace@example.com", "Grace Hopper", &["admin"]),
            )
            .await?;
        assert_eq!(again.user_id, grace.user_id);
        w.domain.engine().run_until_idle().await?;
        let mut reader = w.t.db().reader().await?;
        let invitations = queries::invitations(&mut reader.conn(), org_id, Page::default()).await?;
        let statuses: Vec<&str> = invitations
            .iter()
            .filter(|i| i.user_id == grace.user_id)
            .map(|i| i.status.as_str())
            .collect();
        assert_eq!(statuses, ["revoked", "pending"]);
        drop(reader);
        assert_no_drift(&w).await?;
        Ok(())
    }
);

backend_test!(
    an_open_or_outgoing_invitation_still_refuses_a_second_invite,
    |t: TestDb| async move {
        let sink = SmtpSink::start(SinkOptions::default()).await?;
        let w = smtp_world(t, &sink).await?;
        let org_id = active_org(&w, "sunrise-open").await?;
        let err = w
            .domain
            .invite(
                &admin_actor(),
                org_id,
                &invitee("grace@example.com", "Grace", &["viewer"]),
            )
            .await
            .expect_err("pending");
        assert!(
            matches!(&err, CommandError::Conflict(field)
                if field.message.contains("is pending; resend it")),
            "{err:?}"
        );

        // Not sent yet: the engine has not run.
        let started = w
            .domain
            .invite(
                &admin_actor(),
                org_id,
                &invitee("bea@example.com", "Bea", &["viewer"]),
            )
            .await?;
        let err = w
            .domain
            .invite(
                &admin_actor(),
                org_id,
                &invitee("bea@example.com", "Bea", &["viewer"]),
            )
            .await
            .expect_err("on its way");
        assert!(
            matches!(&err, CommandError::Conflict(field)
                if field.message.contains(&format!("is being sent (workflow {})", started.workflow_id))),
            "{err:?}"
        );
        w.domain.engine().run_until_idle().await?;
        Ok(())
    }
);
