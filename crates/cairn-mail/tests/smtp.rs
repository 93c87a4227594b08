//! SMTP delivery against a real server on loopback, and against one that stalls.

use std::time::{Duration, Instant};

use cairn_mail::{EmailAddress, Mailer, OutboundMessage, SmtpMailer, mailer_from_url};
use cairn_testkit::{SinkOptions, SmtpSink, Stall, StallingSmtp};

fn message(id: &str) -> OutboundMessage {
    OutboundMessage {
        message_id: id.to_owned(),
        from: EmailAddress::parse("noreply@example.co.uk").expect("valid"),
        from_name: Some("Sunrise Care".into()),
        to: EmailAddress::parse("grace@example.com").expect("valid"),
        to_name: None,
        subject: "You're invited to Sunrise Care".into(),
        text: "Hello,\n\nFollow the link to join.\n".into(),
    }
}

#[tokio::test]
async fn a_message_reaches_the_server_with_its_headers() -> anyhow::Result<()> {
    let sink = SmtpSink::start(SinkOptions::default()).await?;
    let mailer = SmtpMailer::from_url(&sink.url())?;
    let delivery = mailer.send(&message("inv-1.1@example.co.uk")).await?;
    assert_eq!(delivery.transport, "smtp");
    assert!(delivery.detail.starts_with("250"), "{}", delivery.detail);
    let received = sink.messages();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].message_id, "inv-1.1@example.co.uk");
    assert_eq!(received[0].to, "grace@example.com");
    assert!(received[0].from.contains("noreply@example.co.uk"));
    assert_eq!(received[0].subject, "You're invited to Sunrise Care");
    assert!(received[0].body.contains("Follow the link to join."));
    assert_eq!(
        mailer.delivered("inv-1.1@example.co.uk").await?,
        None,
        "SMTP cannot tell"
    );
    Ok(())
}

#[tokio::test]
async fn a_5xx_refusal_is_permanent() -> anyhow::Result<()> {
    let sink = SmtpSink::start(SinkOptions {
        refuse: Some("550 5.7.1 Sender domain example.co.uk is not verified".into()),
        ..SinkOptions::default()
    })
    .await?;
    let mailer = mailer_from_url(&sink.url())?;
    let error = mailer
        .send(&message("inv-2.1@example.co.uk"))
        .await
        .expect_err("refused");
    assert!(error.permanent, "{error:?}");
    assert_eq!(error.code, Some(550));
    assert!(error.message.contains("not verified"), "{error}");
    assert!(sink.messages().is_empty());
    Ok(())
}

#[tokio::test]
async fn a_4xx_reply_and_a_refused_connection_are_transient() -> anyhow::Result<()> {
    let sink = SmtpSink::start(SinkOptions {
        transient_first: 1,
        ..SinkOptions::default()
    })
    .await?;
    let mailer = SmtpMailer::from_url(&sink.url())?;
    let error = mailer
        .send(&message("inv-3.1@example.co.uk"))
        .await
        .expect_err("try later");
    assert!(!error.permanent, "{error:?}");
    assert_eq!(error.code, Some(451));
    mailer.send(&message("inv-3.1@example.co.uk")).await?;
    assert_eq!(sink.messages().len(), 1, "the retry went through");

    let port = sink.port();
    sink.stop().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let closed = SmtpMailer::from_url(&format!("smtp://127.0.0.1:{port}"))?;
    let error = closed
        .send(&message("inv-4.1@example.co.uk"))
        .await
        .expect_err("nobody listens");
    assert!(!error.permanent, "{error:?}");
    Ok(())
}

#[test]
fn unsupported_mail_urls_say_what_is_supported() {
    let error = mailer_from_url("sendgrid://key")
        .err()
        .expect("unsupported");
    assert!(
        error
            .to_string()
            .contains("use outbox:PATH (files) or smtp://HOST:PORT"),
        "{error}"
    );
}

/// Issue 20, point 11: an organization named like an RFC 2047 encoded-word reached the
/// reader's mail client decoded, as the line break and `Bcc:` line it hid.
#[tokio::test]
async fn a_subject_that_looks_encoded_reaches_the_reader_as_written() -> anyhow::Result<()> {
    // "x\r\nBcc: mallory@evil.example" as an encoded-word.
    let hostile = "=?utf-8?b?eA0KQmNjOiBtYWxsb3J5QGV2aWwuZXhhbXBsZQ==?=";
    let sink = SmtpSink::start(SinkOptions::default()).await?;
    let mailer = SmtpMailer::from_url(&sink.url())?;
    let cases = [
        format!("You're invited to join {hostile} on cairn"),
        "You're invited to join Zoë's Clinic on cairn".to_owned(),
        "You're invited to join Sunrise Care on cairn".to_owned(),
    ];
    for (n, subject) in cases.iter().enumerate() {
        let mut sent = message(&format!("inv-5.{n}@example.co.uk"));
        sent.subject = subject.clone();
        mailer.send(&sent).await?;
    }
    let received = sink.messages();
    assert_eq!(received.len(), cases.len());
    for (subject, message) in cases.iter().zip(&received) {
        let headers = cairn_testkit::decoded_headers(&message.raw)?;
        let shown: Vec<&str> = headers
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case("subject"))
            .map(|(_, value)| value.as_str())
            .collect();
        assert_eq!(shown, [subject.as_str()], "{}", message.raw);
        assert!(
            !headers
                .iter()
                .any(|(name, _)| name.eq_ignore_ascii_case("bcc")),
            "{headers:?}"
        );
    }
    assert!(
        received[2]
            .raw
            .contains("Subject: You're invited to join Sunrise Care on cairn\r\n"),
        "a plain subject stays readable on the wire: {}",
        received[2].raw
    );
    Ok(())
}

/// Issue 20, point 3: a server that accepts the connection and never greets held a
/// send for good (lettre's timeout covers the TCP connect only). The deadline in the
/// mail URL now ends it, as a transient failure: nothing was handed over.
#[tokio::test]
async fn a_server_that_never_greets_fails_the_send_within_its_deadline() -> anyhow::Result<()> {
    let smtp = StallingSmtp::start(Stall::Greeting).await?;
    let mailer = mailer_from_url(&format!("{}?timeout=300ms", smtp.url()))?;
    let began = Instant::now();
    let error = tokio::time::timeout(
        Duration::from_secs(10),
        mailer.send(&message("inv-5.1@example.co.uk")),
    )
    .await
    .map_err(|_| anyhow::anyhow!("the send still waited for a greeting after 10 s"))?
    .expect_err("no greeting");
    assert!(
        began.elapsed() < Duration::from_secs(3),
        "{:?}",
        began.elapsed()
    );
    assert!(!error.permanent && !error.in_doubt, "{error:?}");
    assert!(error.message.contains("not handed over"), "{error}");
    assert_eq!(smtp.stalled(), 1);
    Ok(())
}

/// Issue 20, point 3: a server that takes the message and never answers its final `.`
/// held a send for good. The deadline now ends it in doubt (the server may have
/// accepted it), the cut-off connection is never used again (its late reply would be
/// read as another message's), and the retry goes through under the same Message-ID.
#[tokio::test]
async fn a_server_that_never_answers_the_final_dot_fails_the_send_in_doubt() -> anyhow::Result<()> {
    let smtp = StallingSmtp::start(Stall::Nowhere).await?;
    let mailer = SmtpMailer::from_url(&smtp.url())?.with_deadline(Duration::from_millis(300));
    // A first message leaves a connection in the pool.
    mailer.send(&message("inv-6.1@example.co.uk")).await?;
    smtp.set_stall(Stall::FinalDot);
    let began = Instant::now();
    let error = tokio::time::timeout(
        Duration::from_secs(10),
        mailer.send(&message("inv-6.2@example.co.uk")),
    )
    .await
    .map_err(|_| anyhow::anyhow!("the send still waited for the reply after 10 s"))?
    .expect_err("no reply to the final dot");
    assert!(
        began.elapsed() < Duration::from_secs(3),
        "{:?}",
        began.elapsed()
    );
    assert!(!error.permanent && error.in_doubt, "{error:?}");
    assert!(error.message.contains("may have accepted"), "{error}");
    assert_eq!(smtp.stalled(), 1);

    smtp.set_stall(Stall::Nowhere);
    let delivery = mailer.send(&message("inv-6.2@example.co.uk")).await?;
    assert!(delivery.detail.starts_with("250"), "{}", delivery.detail);
    assert_eq!(
        smtp.accepted(),
        ["inv-6.1@example.co.uk", "inv-6.2@example.co.uk"]
    );
    Ok(())
}

#[test]
fn a_deadline_that_is_not_a_duration_is_refused() {
    let error = mailer_from_url("smtp://127.0.0.1:2525?timeout=soon")
        .err()
        .expect("refused");
    assert!(error.to_string().contains("timeout=\"soon\""), "{error}");
    let mailer = SmtpMailer::from_url("smtp://127.0.0.1:2525").expect("valid");
    assert_eq!(mailer.deadline(), cairn_mail::DEFAULT_DEADLINE);
}
