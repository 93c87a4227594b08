//! The web console in a real browser (headless Chromium through chromedriver), against
//! a real `cairn serve` on each backend and, for onboarding, a real SMTP server.
//!
//! Each test saves screenshots of the pages it visits to `target/console/` (from the
//! SQLite run), which the README shows.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use cairn_testkit::{Backend, TestDb, backend_test};
use cairn_testkit::{SinkOptions, SmtpSink};
use serde_json::{Value, json};

use crate::common::browser::Browser;
use crate::common::server::Server;
use crate::common::{append, bootstrap_request, new_id, outbox, token};

/// Where a screenshot goes; only the SQLite run writes them.
fn shot(t: &TestDb, name: &str) -> Option<PathBuf> {
    (t.backend() == Backend::Sqlite).then(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/console")
            .join(format!("{name}.png"))
    })
}

async fn screenshot(browser: &Browser, t: &TestDb, name: &str) -> anyhow::Result<()> {
    if let Some(path) = shot(t, name) {
        browser.screenshot(path).await?;
    }
    Ok(())
}

/// Signs in with `token` from the sign-in page; the page it lands on.
async fn sign_in(browser: &Browser, server: &Server, token: &str) -> anyhow::Result<String> {
    browser.goto(&server.url("/console/sign-in")).await?;
    browser.wait_for_title("Sign in").await?;
    browser.fill("#token", token).await?;
    browser
        .click("form[action='/console/sign-in'] button[type=submit]")
        .await?;
    // The page the sign-in leads to, loaded: a page asked for next cannot be replaced
    // by the sign-in's own redirect. A platform operator lands on the organizations; a
    // member of one, on theirs.
    let started = std::time::Instant::now();
    loop {
        let title = browser
            .eval("return document.readyState === 'complete' ? document.title : ''")
            .await
            .unwrap_or(Value::Null);
        if let Some(title) = title.as_str()
            && !title.is_empty()
            && !title.starts_with("Sign in")
        {
            return browser.text().await;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(15),
            "the sign-in led nowhere: {title}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The elements that run past the right edge of the window, if the page is wider
/// than it.
async fn overflowing(browser: &Browser) -> anyhow::Result<Value> {
    browser
        .eval(
            "if (document.documentElement.scrollWidth <= window.innerWidth + 1) return []; \
             return [...document.querySelectorAll('body *')] \
               .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1) \
               .slice(0, 8).map(e => e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right))",
        )
        .await
}

backend_test!(
    the_console_bootstraps_an_organization_and_manages_its_invitations,
    |t: TestDb| async move {
        // Grace's invitations are held by the mail server until the test lets them
        // through, so that the bootstrap is still running while the page watches it.
        let sink = SmtpSink::start(SinkOptions {
            hold_to: Some("grace".to_owned()),
            ..SinkOptions::default()
        })
        .await?;
        let server = Server::start(t.url(), &sink.url()).await?;
        let admin = token(t.url(), &["--platform-admin", "ops"]).await?;
        let browser = Browser::launch().await?;

        // `/` leads to the sign-in page; a token signs in.
        browser.goto(&server.url("/")).await?;
        let text = browser.wait_for_title("Sign in").await?;
        assert!(text.contains("Bearer token"), "{text}");
        screenshot(&browser, &t, "sign-in").await?;
        browser.fill("#token", "not-a-token").await?;
        browser.click("button.primary").await?;
        browser
            .wait_for_text("#token-error", "This token is not accepted")
            .await?;
        browser.fill("#token", &admin).await?;
        browser.click("button.primary").await?;
        browser.wait_for_title("Organizations").await?;
        let text = browser.text().await?;
        assert!(text.contains("ops (platform administrator)"), "{text}");
        assert!(text.contains("No organization yet"), "{text}");

        // A bootstrap refused field by field: each message at its field, what was
        // typed kept, nothing created.
        browser
            .click("a[href='/console/organizations/new']")
            .await?;
        browser.wait_for_title("Bootstrap an organization").await?;
        browser.fill("#organization-slug", "Bad Slug").await?;
        browser.fill("#organization-sender_domain", "co.uk").await?;
        browser
            .fill("#organization-direct_care_settings-max_caseload", "many")
            .await?;
        browser.fill("#admin-name", "Ada Lovelace").await?;
        browser.fill("#admin-email", "ada-at-example.com").await?;
        browser
            .fill("#invitees-1--email", "grace@example.com")
            .await?;
        browser.click("form button.primary").await?;
        browser
            .wait_for_text("#form-error", "correct the fields")
            .await?;
        // The keyboard lands on the error summary, which names each field and leads
        // to it; what was typed comes back with its error.
        assert!(
            error_summary_has_focus(&browser).await?,
            "the refused form's summary has focus"
        );
        let summary = browser.wait_for_text("#form-error", "Slug:").await?;
        for line in [
            "Name: must not be empty",
            "Maximum caseload: must be a whole number, not \"many\"",
            "Person 2 to invite, roles:",
        ] {
            assert!(summary.contains(line), "{line:?} in {summary}");
        }
        for (field, message) in [
            ("organization.name", "must not be empty"),
            ("organization.slug", "is not a slug"),
            ("organization.sender_domain", "it is itself a public suffix"),
            (
                "organization.direct_care_settings.max_caseload",
                "must be a whole number",
            ),
            ("admin.email", "not a valid email address"),
            ("invitees[1].name", ""),
            ("invitees[1].roles", "at least one role"),
        ] {
            let text = browser
                .wait_for_text(&format!("[data-field='{field}']"), message)
                .await?;
            assert!(text.contains(message), "{field}: {text}");
        }
        let kept = browser
            .eval("return document.getElementById('organization-slug').value")
            .await?;
        assert_eq!(kept, json!("Bad Slug"));
        let invalid = browser
            .eval(
                "return document.getElementById('organization-slug').getAttribute('aria-invalid')",
            )
            .await?;
        assert_eq!(invalid, json!("true"));
        screenshot(&browser, &t, "bootstrap-refused").await?;
        browser
            .click("#form-error a[href='#organization-slug']")
            .await?;
        assert_eq!(
            browser.eval("return document.activeElement.id").await?,
            json!("organization-slug"),
            "the summary's link leads the keyboard to the field"
        );
        let listed = server.get(&admin, "/v1/organizations").await?;
        assert_eq!(
            listed["items"],
            json!([]),
            "a refused bootstrap creates nothing"
        );

        // The same form, corrected: the run's page shows its progress live.
        browser.fill("#organization-name", "Sunrise Care").await?;
        browser.fill("#organization-slug", "sunrise-care").await?;
        browser
            .fill("#organization-sender_domain", "mail.sunrise.example.co.uk")
            .await?;
        browser
            .fill("#organization-direct_care_settings-max_caseload", "30")
            .await?;
        browser.fill("#admin-email", "ada@example.com").await?;
        browser.fill("#invitees-1--name", "Grace Hopper").await?;
        browser
            .click("input[name='invitees[1].roles'][value='clinician']")
            .await?;
        browser.click("form button.primary").await?;
        browser.wait_for_title("Organization bootstrap run").await?;
        browser
            .wait_for_text("[data-run-status]", "running")
            .await?;
        sink.wait_held(1, Duration::from_secs(30)).await?;
        // The page survives a reload mid-run.
        let here = browser.client().current_url().await?.to_string();
        browser.goto(&here).await?;
        browser
            .wait_for_text("[data-run-status]", "running")
            .await?;
        browser
            .wait_for_text("[data-live-status][data-state='live']", "live")
            .await?;
        browser
            .eval("window.cairnTestMarker = 'still here'; return true")
            .await?;
        screenshot(&browser, &t, "bootstrap-running").await?;
        sink.release(1)?;
        browser
            .wait_for_text("[data-run-status]", "completed")
            .await?;
        let text = browser.text().await?;
        assert_eq!(
            text.matches("record_invitation:").count(),
            2,
            "Ada's and Grace's invitations are recorded: {text}"
        );
        assert_eq!(
            browser.eval("return window.cairnTestMarker").await?,
            json!("still here"),
            "the steps arrived over the live feed, without a reload"
        );
        screenshot(&browser, &t, "bootstrap-completed").await?;

        // The organization's page: its people, its invitations with their delivery.
        browser.click("a[href^='/console/organizations/']").await?;
        let text = browser.wait_for_title("Sunrise Care").await?;
        assert!(text.contains("Ada Lovelace"), "{text}");
        assert!(text.contains("Grace Hopper"), "{text}");
        let grace = "tr[data-invitation='grace@example.com']";
        browser
            .wait_for_text(
                &format!("{grace} [data-delivery]"),
                "Accepted by the mail server · 1 email,",
            )
            .await?;
        // The first admin, active from the start, is not "pending" for nothing.
        browser
            .wait_for_text(
                "tr[data-invitation='ada@example.com']",
                "their account is already active",
            )
            .await?;
        screenshot(&browser, &t, "organization").await?;

        // Resent: a new link goes out, and the page follows it live.
        browser
            .click(&format!("{grace} button[data-action='resend']"))
            .await?;
        browser.wait_for_text("p.notice", "sent again").await?;
        sink.wait_held(2, Duration::from_secs(30)).await?;
        browser
            .eval("window.cairnTestMarker = 'resent'; return true")
            .await?;
        sink.release(2)?;
        browser
            .wait_for_text(&format!("{grace} [data-delivery]"), "· 2 emails,")
            .await?;
        assert_eq!(
            browser.eval("return window.cairnTestMarker").await?,
            json!("resent")
        );

        // Revoked, after a confirmation that asks why.
        browser
            .click(&format!("{grace} a[data-action='revoke']"))
            .await?;
        browser.wait_for_title("Revoke an invitation").await?;
        browser.click("button.danger").await?;
        browser.wait_for_text("[data-field='reason']", "").await?;
        browser.fill("#reason", "Took another job").await?;
        browser.click("button.danger").await?;
        browser.wait_for_text("p.notice", "revoked").await?;
        let row = browser.wait_for_text(grace, "revoked").await?;
        assert!(row.contains("Took another job"), "{row}");
        let invitations = server
            .get(
                &admin,
                &format!(
                    "/v1/organizations/{}/invitations",
                    listed_org(&server, &admin).await?
                ),
            )
            .await?;
        let revoked = invitations["items"]
            .as_array()
            .and_then(|items| items.iter().find(|i| i["email"] == "grace@example.com"))
            .context("grace's invitation")?;
        assert_eq!(revoked["status"], json!("revoked"));
        assert_eq!(revoked["send_count"], json!(2));

        // Settings: a refusal at the field, then saved.
        browser.fill("#max_caseload", "900").await?;
        browser
            .click("form[action$='/settings'] button.primary")
            .await?;
        browser
            .wait_for_text("[data-field='max_caseload']", "500")
            .await?;
        browser.fill("#max_caseload", "40").await?;
        browser
            .click("form[action$='/settings'] button.primary")
            .await?;
        browser
            .wait_for_text("p.notice", "settings are saved")
            .await?;
        let org = server
            .get(
                &admin,
                &format!("/v1/organizations/{}", listed_org(&server, &admin).await?),
            )
            .await?;
        assert_eq!(org["direct_care_settings"]["max_caseload"], json!(40));

        // At a phone's width nothing runs off the side.
        browser.set_window_size(390, 844).await?;
        browser
            .goto(browser.client().current_url().await?.as_ref())
            .await?;
        browser.wait_for_title("Sunrise Care").await?;
        let over = overflowing(&browser).await?;
        assert_eq!(over, json!([]), "the organization page overflows at 390 px");
        screenshot(&browser, &t, "organization-phone").await?;
        browser.close().await?;
        Ok(())
    }
);

backend_test!(
    a_bounced_invitation_shows_on_the_organization_page_and_goes_to_a_corrected_address,
    |t: TestDb| async move {
        // The mail server refuses every address at bounce.example for good.
        let sink = SmtpSink::start(SinkOptions {
            refuse: Some("550 5.1.1 Mailbox unavailable".into()),
            refuse_to: Some("@bounce.example".into()),
            ..SinkOptions::default()
        })
        .await?;
        let server = Server::start(t.url(), &sink.url()).await?;
        let admin = token(t.url(), &["--platform-admin", "ops"]).await?;
        let accepted = bootstrapped(&server, &admin, bootstrap_request("sunrise-bounce")).await?;
        let org_id = accepted["org_id"].as_str().context("the org id")?;
        let browser = Browser::launch().await?;
        sign_in(&browser, &server, &admin).await?;
        browser
            .goto(&server.url(&format!("/console/organizations/{org_id}")))
            .await?;
        browser.wait_for_title("Sunrise Care").await?;

        let invite = async |name: &str, email: &str| -> anyhow::Result<()> {
            browser.fill("#name", name).await?;
            browser.fill("#email", email).await?;
            browser
                .click("form[action$='/invitations'] input[name='roles'][value='viewer']")
                .await?;
            browser
                .click("form[action$='/invitations'] button.primary")
                .await
        };
        invite("Bea Schmidt", "bea@bounce.example").await?;
        browser.wait_for_text("p.notice", "on its way").await?;
        // The refusal comes to the open page, with what the server said, on the
        // invitation and on the person.
        let bea = "tr[data-invitation='bea@bounce.example']";
        let delivery = browser
            .wait_for_text(
                &format!("{bea} [data-delivery]"),
                "Refused by the mail server",
            )
            .await?;
        assert!(
            delivery.contains("(550): 5.1.1 Mailbox unavailable"),
            "{delivery}"
        );
        let row = browser.wait_for_text(bea, "refused").await?;
        assert!(row.contains("Withdraw"), "{row}");
        let person = browser
            .wait_for_text("[data-refused]", "their invitation email was refused")
            .await?;
        assert!(!person.is_empty());
        // Someone invited is shown the roles they will have.
        browser
            .wait_for_text("tr[data-person]:last-child", "viewer (once they accept)")
            .await?;
        browser
            .eval("document.getElementById('invitations').scrollIntoView(); return true")
            .await?;
        screenshot(&browser, &t, "invitation-refused").await?;

        // Inviting the same address again would bounce again: the form says so, and
        // what to do instead.
        invite("Bea Schmidt", "bea@bounce.example").await?;
        let refused = browser
            .wait_for_text("[data-field='email']", "was refused by the mail server")
            .await?;
        assert!(
            refused.contains("to a corrected address, or withdraw it"),
            "{refused}"
        );

        // Sent to a corrected address, from the invitation's row.
        browser
            .goto(&server.url(&format!("/console/organizations/{org_id}")))
            .await?;
        browser.wait_for_title("Sunrise Care").await?;
        browser
            .click(&format!("{bea} a[data-action='correct']"))
            .await?;
        let page = browser
            .wait_for_title("Send to a corrected address")
            .await?;
        assert!(page.contains("(550): 5.1.1 Mailbox unavailable"), "{page}");
        browser.fill("#email", "not an address").await?;
        browser.click("form button.primary").await?;
        browser
            .wait_for_text("[data-field='email']", "valid email address")
            .await?;
        browser.fill("#email", "bea.schmidt@example.com").await?;
        browser.click("form button.primary").await?;
        browser
            .wait_for_text("p.notice", "corrected address")
            .await?;
        let corrected = "tr[data-invitation='bea.schmidt@example.com']";
        browser
            .wait_for_text(
                &format!("{corrected} [data-delivery]"),
                "Accepted by the mail server · 2 emails,",
            )
            .await?;
        assert!(
            sink.messages()
                .iter()
                .any(|m| m.to.contains("bea.schmidt@example.com")),
            "the invitation went to the corrected address"
        );
        let text = browser.text().await?;
        assert!(!text.contains("bea@bounce.example"), "{text}");
        // The email that went, as the admin can check it, without its link's token.
        browser
            .click(&format!("{corrected} a[data-action='email']"))
            .await?;
        let page = browser.wait_for_title("Invitation email").await?;
        for expected in [
            "Bea Schmidt <bea.schmidt@example.com>",
            "You're invited to join Sunrise Care on cairn",
            "as viewer",
            "?token=…",
            "email 2",
        ] {
            assert!(page.contains(expected), "{expected:?} in {page}");
        }
        let sent = sink
            .messages()
            .into_iter()
            .find(|m| m.to.contains("bea.schmidt@"))
            .context("the corrected email")?;
        let start = sent.body.find("token=").context("a link")? + "token=".len();
        assert!(
            !page.contains(&sent.body[start..start + 64]),
            "the token is not shown"
        );
        browser
            .goto(&server.url(&format!("/console/organizations/{org_id}")))
            .await?;
        browser.wait_for_title("Sunrise Care").await?;

        // Another refused invitation is withdrawn, after a confirmation.
        invite("Cy Young", "cy@bounce.example").await?;
        let cy = "tr[data-invitation='cy@bounce.example']";
        browser
            .wait_for_text(
                &format!("{cy} [data-delivery]"),
                "Refused by the mail server",
            )
            .await?;
        browser
            .click(&format!("{cy} a[data-action='revoke']"))
            .await?;
        browser
            .wait_for_text("h1", "Withdraw the invitation to cy@bounce.example?")
            .await?;
        browser.fill("#reason", "No such mailbox").await?;
        browser.click("button.danger").await?;
        browser.wait_for_text("p.notice", "revoked").await?;
        let row = browser.wait_for_text(cy, "revoked").await?;
        assert!(row.contains("No such mailbox"), "{row}");

        // The API says the same.
        let invitations = server
            .get(&admin, &format!("/v1/organizations/{org_id}/invitations"))
            .await?;
        let statuses: Vec<(String, String)> = invitations["items"]
            .as_array()
            .context("items")?
            .iter()
            .map(|i| {
                (
                    i["email"].as_str().unwrap_or_default().to_owned(),
                    i["status"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .filter(|(email, _)| email.starts_with("bea") || email.starts_with("cy"))
            .collect();
        assert_eq!(
            statuses,
            [
                ("bea.schmidt@example.com".to_owned(), "pending".to_owned()),
                ("cy@bounce.example".to_owned(), "revoked".to_owned()),
            ]
        );
        browser.close().await?;
        Ok(())
    }
);

backend_test!(
    the_console_changes_a_persons_roles_and_deactivates_and_reactivates_them,
    |t: TestDb| async move {
        let sink = SmtpSink::start(SinkOptions::default()).await?;
        let server = Server::start(t.url(), &sink.url()).await?;
        let admin = token(t.url(), &["--platform-admin", "ops"]).await?;
        let accepted = bootstrapped(&server, &admin, bootstrap_request("sunrise-people")).await?;
        let org = accepted["org_id"]
            .as_str()
            .context("the org id")?
            .to_owned();
        // Grace accepts her invitation, as a clinician.
        let message = sink
            .messages()
            .into_iter()
            .find(|m| m.to.contains("grace@"))
            .context("grace's invitation")?;
        let start = message.body.find("token=").context("a link")? + "token=".len();
        let link_token = &message.body[start..start + 64];
        let acceptance = server
            .http
            .post(server.url("/v1/invitations/accept"))
            .json(&json!({ "token": link_token }))
            .send()
            .await?;
        anyhow::ensure!(
            acceptance.status() == 200,
            "accept: {}",
            acceptance.status()
        );
        let grace = acceptance.json::<Value>().await?["user_id"]
            .as_str()
            .context("grace's id")?
            .to_owned();
        let grace_token = |role: &'static str| {
            let (org, grace) = (org.clone(), grace.clone());
            let url = t.url().to_owned();
            async move { token(&url, &["--org", &org, "--user", &grace, "--role", role]).await }
        };
        let status_of = async |token: &str| -> anyhow::Result<(u16, Value)> {
            let response = server
                .http
                .get(server.url(&format!("/v1/organizations/{org}/users")))
                .bearer_auth(token)
                .send()
                .await?;
            Ok((response.status().as_u16(), response.json().await?))
        };
        let as_clinician = grace_token("clinician").await?;
        assert_eq!(
            status_of(&as_clinician).await?.0,
            200,
            "a clinician reads the people"
        );

        let browser = Browser::launch().await?;
        sign_in(&browser, &server, &admin).await?;
        browser
            .goto(&server.url(&format!("/console/organizations/{org}")))
            .await?;
        browser.wait_for_title("Sunrise Care").await?;
        let row = format!("tr[data-person='{grace}']");

        // Her roles: clinician taken away, viewer given.
        browser
            .click(&format!("{row} a[data-action='roles']"))
            .await?;
        browser.wait_for_title("Change roles").await?;
        browser
            .click("input[name='roles'][value='clinician']")
            .await?;
        browser.click("form button.primary").await?;
        browser
            .wait_for_text("[data-field='roles']", "at least one role")
            .await?;
        browser.click("input[name='roles'][value='viewer']").await?;
        browser.click("form button.primary").await?;
        browser
            .wait_for_text("p.notice", "roles are changed")
            .await?;
        let text = browser.wait_for_text(&row, "viewer").await?;
        assert!(!text.contains("clinician"), "{text}");
        // The role taken away stopped working at once; the token's other claims never
        // held more than she has.
        let (status, problem) = status_of(&as_clinician).await?;
        assert_eq!(status, 403, "{problem}");
        let as_viewer = grace_token("viewer").await?;
        assert_eq!(status_of(&as_viewer).await?.0, 200);

        // Deactivated, after a confirmation that asks why.
        browser
            .click(&format!("{row} a[data-action='deactivate']"))
            .await?;
        browser.wait_for_title("Deactivate a person").await?;
        browser.click("button[data-action='deactivate']").await?;
        browser.wait_for_text("[data-field='reason']", "").await?;
        browser.fill("#reason", "On leave until March").await?;
        browser.click("button[data-action='deactivate']").await?;
        browser.wait_for_text("p.notice", "deactivated").await?;
        let text = browser.wait_for_text(&row, "deactivated").await?;
        assert!(text.contains("On leave until March"), "{text}");
        screenshot(&browser, &t, "person-deactivated").await?;
        // Her tokens stop working in the API, and in the console's sign-in.
        let (status, problem) = status_of(&as_viewer).await?;
        assert_eq!(status, 401, "{problem}");
        assert!(
            problem["detail"]
                .as_str()
                .is_some_and(|d| d.contains("is deactivated")),
            "{problem}"
        );
        browser
            .click("form[action='/console/sign-out'] button")
            .await?;
        browser.wait_for_title("Sign in").await?;
        browser.fill("#token", &as_viewer).await?;
        browser.click("button.primary").await?;
        browser
            .wait_for_text("#token-error", "is deactivated")
            .await?;

        // Reactivated: her token works again.
        sign_in(&browser, &server, &admin).await?;
        browser
            .goto(&server.url(&format!("/console/organizations/{org}")))
            .await?;
        browser.wait_for_title("Sunrise Care").await?;
        browser
            .click(&format!("{row} button[data-action='reactivate']"))
            .await?;
        browser.wait_for_text("p.notice", "reactivated").await?;
        assert_eq!(status_of(&as_viewer).await?.0, 200);
        browser.close().await?;
        Ok(())
    }
);

backend_test!(
    a_run_is_cancelled_with_a_reason_and_a_failed_bootstrap_is_started_again_with_its_details,
    |t: TestDb| async move {
        // Grace's invitations wait at the mail server until the test lets them through;
        // every address at bounce.example is refused for good.
        let sink = SmtpSink::start(SinkOptions {
            hold_to: Some("grace".to_owned()),
            refuse: Some("550 5.1.1 Mailbox unavailable".into()),
            refuse_to: Some("@bounce.example".into()),
            ..SinkOptions::default()
        })
        .await?;
        let server = Server::start(t.url(), &sink.url()).await?;
        let admin = token(t.url(), &["--platform-admin", "ops"]).await?;
        let browser = Browser::launch().await?;
        sign_in(&browser, &server, &admin).await?;

        // A bootstrap held mid-way is cancelled: it undoes what it did.
        let running = server
            .bootstrap(&admin, bootstrap_request("sunrise-cancel"))
            .await?;
        let run = running["workflow_id"]
            .as_str()
            .context("the run")?
            .to_owned();
        let org = running["org_id"].as_str().context("the org")?.to_owned();
        sink.wait_held(1, Duration::from_secs(30)).await?;
        browser
            .goto(&server.url(&format!("/console/workflows/{run}")))
            .await?;
        browser
            .wait_for_text("[data-run-status]", "running")
            .await?;
        browser.click("a[data-action='cancel-run']").await?;
        browser.wait_for_title("Cancel this").await?;
        browser.click("button.danger").await?;
        browser.wait_for_text("[data-field='reason']", "").await?;
        browser.fill("#reason", "Asked for by mistake").await?;
        browser.click("button.danger").await?;
        browser.wait_for_text("p.notice", "cancelled").await?;
        sink.release(1)?;
        browser.wait_for_text("[data-run-status]", "failed").await?;
        let page = browser
            .wait_for_text(
                "[role=alert]",
                "cancelled by service:platform-admin-ops: Asked for by mistake",
            )
            .await?;
        assert!(!page.is_empty());
        let organization = server
            .get(&admin, &format!("/v1/organizations/{org}"))
            .await?;
        assert_eq!(
            (
                organization["status"].clone(),
                organization["is_active"].clone()
            ),
            (json!("failed"), json!(false)),
            "the cancelled bootstrap was undone: {organization}"
        );
        // Undone, it is not tried again; it is started again.
        let retried = server
            .http
            .post(server.url(&format!("/v1/workflows/{run}/retry")))
            .bearer_auth(&admin)
            .json(&json!({ "reason": "try again" }))
            .send()
            .await?;
        assert_eq!(retried.status().as_u16(), 409);
        let problem: Value = retried.json().await?;
        assert!(
            problem["detail"]
                .as_str()
                .is_some_and(|d| d.contains("compensations ran")),
            "{problem}"
        );

        // A bootstrap whose admin's address is refused fails; its page offers to start it
        // again with the same details, filled in, for the address to be corrected.
        let mut request: Value = serde_json::from_str(&bootstrap_request("sunrise-again"))?;
        request["admin"]["email"] = json!("ada@bounce.example");
        request["invitees"] = json!([]);
        let failed = bootstrapped_or_failed(&server, &admin, request.to_string()).await?;
        browser
            .goto(&server.url(&format!("/console/workflows/{failed}")))
            .await?;
        browser.wait_for_text("[data-run-status]", "failed").await?;
        let text = browser.text().await?;
        assert!(!text.contains("Try again from the failed step"), "{text}");
        browser.click("a[data-action='bootstrap-again']").await?;
        browser.wait_for_title("Bootstrap an organization").await?;
        browser
            .wait_for_text(
                "[data-again]",
                "Filled in with what the failed bootstrap asked for",
            )
            .await?;
        for (field, value) in [
            ("organization-name", "Sunrise Care"),
            ("organization-slug", "sunrise-again"),
            ("admin-email", "ada@bounce.example"),
            ("admin-name", "Ada Lovelace"),
        ] {
            assert_eq!(
                browser
                    .eval(&format!("return document.getElementById('{field}').value"))
                    .await?,
                json!(value),
                "{field}"
            );
        }
        screenshot(&browser, &t, "bootstrap-again").await?;
        browser.fill("#admin-email", "ada@example.com").await?;
        browser.click("form button.primary").await?;
        browser.wait_for_title("Organization bootstrap run").await?;
        browser
            .wait_for_text("[data-run-status]", "completed")
            .await?;
        browser.close().await?;
        Ok(())
    }
);

/// Bootstraps through the API and waits for its run to finish, however it ends; the
/// run's id.
async fn bootstrapped_or_failed(
    server: &Server,
    admin: &str,
    request: String,
) -> anyhow::Result<String> {
    let accepted = server.bootstrap(admin, request).await?;
    let run = accepted["workflow_id"]
        .as_str()
        .context("the bootstrap's run")?
        .to_owned();
    let started = tokio::time::Instant::now();
    loop {
        let state = server.get(admin, &format!("/v1/workflows/{run}")).await?;
        if matches!(state["status"].as_str(), Some("completed" | "failed")) {
            return Ok(run);
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "the run did not finish: {state}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A `cairn serve` on `t`, mailing to an outbox of its own, and a platform
/// administrator's token.
async fn opened(t: &TestDb) -> anyhow::Result<(tempfile::TempDir, Server, String)> {
    let (outbox, mail) = outbox()?;
    let server = Server::start(t.url(), &mail).await?;
    let admin = token(t.url(), &["--platform-admin", "ops"]).await?;
    Ok((outbox, server, admin))
}

/// Appends an event of no organization that fails in its handler (its organization
/// does not exist).
async fn append_failing(t: &TestDb) {
    append(
        t.url(),
        "organization",
        &new_id(),
        "organization.direct_care_settings_updated",
        r#"{"settings":{"visit_verification":true,"client_assignment":false,"max_caseload":10}}"#,
    )
    .await;
}

/// Signs out, then in again with `token`.
async fn switch_to(browser: &Browser, server: &Server, token: &str) -> anyhow::Result<String> {
    browser
        .click("form[action='/console/sign-out'] button")
        .await?;
    browser.wait_for_title("Sign in").await?;
    sign_in(browser, server, token).await
}

/// Bootstraps an organization through the API and waits for its run to complete;
/// the API's answer.
async fn bootstrapped(server: &Server, admin: &str, request: String) -> anyhow::Result<Value> {
    let accepted = server.bootstrap(admin, request).await?;
    let run = accepted["workflow_id"]
        .as_str()
        .context("the bootstrap's run")?;
    wait_completed(server, admin, run).await?;
    Ok(accepted)
}

/// The one organization the API lists.
async fn listed_org(server: &Server, token: &str) -> anyhow::Result<String> {
    let listed = server.get(token, "/v1/organizations").await?;
    Ok(listed["items"][0]["id"]
        .as_str()
        .context("an organization")?
        .to_owned())
}

backend_test!(
    the_console_retries_failures_and_draws_a_timeline,
    |t: TestDb| async move {
        let (_outbox, mail) = outbox()?;
        let server = Server::start(t.url(), &mail).await?;
        let admin = token(t.url(), &["--platform-admin", "ops"]).await?;
        let accepted = server
            .bootstrap(&admin, bootstrap_request("sunrise-care"))
            .await?;
        let correlation = accepted["correlation_id"]
            .as_str()
            .context("a correlation id")?
            .to_owned();

        // An event that fails because its organization does not exist yet, and one
        // whose payload is hostile markup.
        let missing = new_id();
        append(
            t.url(),
            "organization",
            &missing,
            "organization.direct_care_settings_updated",
            r#"{"settings":{"visit_verification":true,"client_assignment":false,"max_caseload":10}}"#,
        )
        .await;
        let hostile = r#"{"note":"<script>window.cairnOwned=1</script>\"><img src=x onerror=\"window.cairnOwned=2\">"}"#;
        append(t.url(), "gadget", &new_id(), "gadget.made", hostile).await;

        let browser = Browser::launch().await?;
        sign_in(&browser, &server, &admin).await?;

        // The log, newest first, with its failures marked.
        browser.goto(&server.url("/console/events")).await?;
        let text = browser.wait_for_title("Events").await?;
        assert!(text.contains("gadget.made"), "{text}");
        assert!(text.contains("organization.bootstrap.initiated"), "{text}");
        let positions = browser
            .eval("return [...document.querySelectorAll('table.events tbody tr td:first-child')].map(td => Number(td.innerText))")
            .await?;
        let positions: Vec<i64> = serde_json::from_value(positions)?;
        assert!(
            positions.windows(2).all(|w| w[0] > w[1]),
            "newest first: {positions:?}"
        );
        let row = browser
            .eval("return [...document.querySelectorAll('table.events tbody tr')].find(tr => tr.innerText.includes('gadget.made'))?.innerText")
            .await?;
        assert!(row.as_str().is_some_and(|r| r.contains("failed")), "{row}");
        screenshot(&browser, &t, "events").await?;

        // A hostile payload is text, not markup.
        let href = browser
            .eval("return [...document.querySelectorAll('table.events tbody tr')].find(tr => tr.innerText.includes('gadget.made')).querySelector('a').getAttribute('href')")
            .await?;
        browser
            .goto(&server.url(href.as_str().context("the event's link")?))
            .await?;
        browser.wait_for_title("Event").await?;
        let payload = browser.wait_for_text("[data-payload]", "<script>").await?;
        assert!(payload.contains("onerror"), "{payload}");
        assert_eq!(
            browser
                .eval("return window.cairnOwned === undefined")
                .await?,
            json!(true)
        );
        assert_eq!(
            browser
                .eval("return document.querySelectorAll('main img, main script').length")
                .await?,
            json!(0)
        );
        screenshot(&browser, &t, "event").await?;

        // Failures by code; the organization appears; retrying the selected event
        // fixes it, and the page says so.
        browser.goto(&server.url("/console/failures")).await?;
        let text = browser.wait_for_title("Failures").await?;
        assert!(text.contains("P9002"), "{text}");
        assert!(text.contains("does not exist"), "{text}");
        screenshot(&browser, &t, "failures").await?;
        append(
            t.url(),
            "organization",
            &missing,
            "organization.created",
            r#"{"name":"Late Care","slug":"late-care","sender_domain":"mail.late.example.com","sender_address":"noreply@late.example.com","direct_care_settings":{"visit_verification":true,"client_assignment":true,"max_caseload":25}}"#,
        )
        .await;
        let failed: Value = server.get(&admin, "/v1/events/failed").await?;
        let event_id = failed["items"]
            .as_array()
            .and_then(|items| {
                items
                    .iter()
                    .find(|e| e["event_type"] == "organization.direct_care_settings_updated")
            })
            .and_then(|e| e["event_id"].as_str())
            .context("the failed settings event")?
            .to_owned();
        browser
            .click(&format!("input[name='event_id'][value='{event_id}']"))
            .await?;
        browser
            .click("button[data-action='retry-selected']")
            .await?;
        let summary = browser
            .wait_for_text("[data-retry-summary]", "retried")
            .await?;
        assert!(
            summary.contains("1 retried: 1 fixed, 0 failed again"),
            "{summary}"
        );
        screenshot(&browser, &t, "retried").await?;
        browser
            .goto(&server.url(&format!("/console/events/{event_id}")))
            .await?;
        browser.wait_for_title("Event").await?;
        browser.wait_for_text(".heading .badge", "applied").await?;

        // Retrying nothing is refused as such, and a code's "Retry all" first says
        // how many it would retry, with the organization of each failed event shown.
        browser.goto(&server.url("/console/failures")).await?;
        let text = browser.wait_for_title("Failures").await?;
        assert!(text.contains("Organization"), "{text}");
        let (jar, csrf) = session_jar(&browser).await?;
        let nothing = post_form(
            &server,
            &jar,
            "/console/failures",
            format!("csrf={csrf}&action=selected"),
        )
        .await?;
        assert_eq!(nothing.status(), 422);
        assert!(nothing.text().await?.contains("No event was selected"));
        let unconfirmed = post_form(
            &server,
            &jar,
            "/console/failures",
            format!("csrf={csrf}&retry_code=P9002"),
        )
        .await?;
        assert_eq!(unconfirmed.status(), 200);
        assert!(
            unconfirmed.text().await?.contains("data-retry-count=\"1\""),
            "a form without the confirmation only asks"
        );
        browser
            .click("a[data-action='retry-code'][href$='P9002']")
            .await?;
        let asked = browser
            .wait_for_text("[data-retry-count]", "1 event")
            .await?;
        assert!(asked.contains("P9002"), "{asked}");
        browser.click("button[data-action='confirm-retry']").await?;
        let summary = browser
            .wait_for_text("[data-retry-summary]", "retried")
            .await?;
        assert!(
            summary.contains("1 retried: 0 fixed, 1 failed again"),
            "{summary}"
        );

        // The bootstrap's timeline as a waterfall: the request, its events, the
        // workflow's steps and the emails, each bar leading to its hop.
        browser
            .goto(&server.url(&format!("/console/traces/{correlation}")))
            .await?;
        browser.wait_for_title("Trace").await?;
        for hop in ["http", "event", "workflow", "step", "email"] {
            let count = browser
                .eval(&format!(
                    "return document.querySelectorAll('svg.bars a[data-hop=\"{hop}\"]').length"
                ))
                .await?;
            assert!(count.as_u64().unwrap_or(0) >= 1, "a {hop} bar: {count}");
        }
        let bars = browser
            .eval("return document.querySelectorAll('svg.bars rect.bar').length")
            .await?;
        let hops = browser
            .eval("return document.querySelectorAll('ol.hops li').length")
            .await?;
        assert_eq!(bars, hops, "one bar per hop");
        let emails = browser
            .eval("return document.querySelectorAll('ol.hops li[data-hop=\"email\"]').length")
            .await?;
        assert_eq!(emails, json!(3), "ada's, grace's and alan's invitations");
        screenshot(&browser, &t, "trace").await?;
        browser.click("svg.bars a[data-hop='email']").await?;
        let target = browser.eval("return location.hash").await?;
        assert!(
            target.as_str().is_some_and(|h| h.starts_with("#hop-")),
            "{target}"
        );
        let shown = browser
            .eval("return document.querySelector(location.hash).dataset.hop")
            .await?;
        assert_eq!(shown, json!("email"), "the bar leads to its hop");
        // Each event and step hop leads to its own page.
        let pages = browser
            .eval("return [...document.querySelectorAll('ol.hops li[data-hop=event] a[data-hop-page]')].map(a => a.getAttribute('href'))")
            .await?;
        assert!(
            pages.as_array().is_some_and(|p| !p.is_empty()
                && p.iter().all(|h| h
                    .as_str()
                    .is_some_and(|h| h.starts_with("/console/events/")))),
            "{pages}"
        );
        browser
            .click("ol.hops li[data-hop=step] a[data-hop-page]")
            .await?;
        browser.wait_for_title("Organization bootstrap run").await?;

        // A timeline with an error says how many, and leads to the first.
        let failed: Value = server.get(&admin, "/v1/events/failed").await?;
        let failed_correlation = failed["items"][0]["event_metadata"]["correlation_id"]
            .as_str()
            .context("a failed event's correlation id")?
            .to_owned();
        browser
            .goto(&server.url(&format!("/console/traces/{failed_correlation}")))
            .await?;
        browser.wait_for_title("Trace").await?;
        browser.click("a[data-first-error]").await?;
        let first = browser
            .eval("return document.querySelector(location.hash)?.classList.contains('hop-failed') ?? false")
            .await?;
        assert_eq!(
            first,
            json!(true),
            "the link leads to the first hop with an error"
        );

        browser.goto(&server.url("/console/workflows")).await?;
        let text = browser.wait_for_title("Workflows").await?;
        assert!(text.contains("organization_bootstrap"), "{text}");
        browser.goto(&server.url("/console/health")).await?;
        let text = browser.wait_for_title("Health").await?;
        assert!(text.contains("Integration probe"), "{text}");
        assert!(text.contains("Events per second"), "{text}");
        screenshot(&browser, &t, "health").await?;
        browser.close().await?;
        Ok(())
    }
);

backend_test!(
    the_console_keeps_tenants_apart_refuses_forged_forms_and_ends_expired_sessions,
    |t: TestDb| async move {
        let (_outbox, mail) = outbox()?;
        let server = Server::start(t.url(), &mail).await?;
        let admin = token(t.url(), &["--platform-admin", "ops"]).await?;
        let a = server
            .bootstrap(&admin, bootstrap_request("care-a"))
            .await?;
        let b = server
            .bootstrap(&admin, bootstrap_request("care-b"))
            .await?;
        let (org_a, org_b) = (
            a["org_id"].as_str().context("a")?.to_owned(),
            b["org_id"].as_str().context("b")?.to_owned(),
        );
        let run_b = b["workflow_id"].as_str().context("b's run")?.to_owned();
        let admin_a = token(t.url(), &["--org", &org_a, "--role", "admin"]).await?;

        let browser = Browser::launch().await?;
        // An organization's admin lands on their organization, named.
        let text = sign_in(&browser, &server, &admin_a).await?;
        assert_eq!(
            browser.eval("return location.pathname").await?,
            json!(format!("/console/organizations/{org_a}")),
            "{text}"
        );
        assert!(text.contains("admin of Sunrise Care"), "{text}");
        assert!(!text.contains(&org_a), "named, not by id: {text}");
        browser.goto(&server.url("/console/organizations")).await?;
        let text = browser.wait_for_title("Organizations").await?;
        assert!(
            text.contains("care-a") && !text.contains("care-b"),
            "A sees only A: {text}"
        );

        // B's pages, typed into the address bar, are not found.
        let b_event: Value = server
            .get(&admin, &format!("/v1/events?stream_id={org_b}"))
            .await?;
        let b_event = b_event["items"][0]["event_id"]
            .as_str()
            .context("an event of b")?
            .to_owned();
        for path in [
            format!("/console/organizations/{org_b}"),
            format!("/console/workflows/{run_b}"),
            format!("/console/events/{b_event}"),
            format!(
                "/console/traces/{}",
                b["correlation_id"].as_str().unwrap_or_default()
            ),
        ] {
            browser.goto(&server.url(&path)).await?;
            let text = browser.wait_for_title("Not found").await?;
            assert!(!text.contains("care-b"), "{path}: {text}");
        }
        let cookies = browser.cookies().await?;
        let session = cookies
            .iter()
            .find(|c| c.name() == "cairn_session")
            .context("a session cookie")?;
        assert_eq!(session.http_only(), Some(true));
        assert_eq!(format!("{:?}", session.same_site()), "Some(Strict)");
        let jar = format!("cairn_session={}", session.value());
        let csrf = server.form_token(&jar).await?;
        let status = server
            .http
            .get(server.url(&format!("/console/organizations/{org_b}")))
            .header("cookie", &jar)
            .send()
            .await?
            .status();
        assert_eq!(status, 404);

        // A form without the CSRF token, with a wrong one, or from another site, is
        // refused and changes nothing.
        let settings = format!("/console/organizations/{org_a}/settings");
        for (body, cross_site) in [
            ("max_caseload=7".to_owned(), false),
            ("max_caseload=7&csrf=0000".to_owned(), false),
            (format!("max_caseload=7&csrf={csrf}"), true),
        ] {
            let mut request = server
                .http
                .post(server.url(&settings))
                .header("cookie", &jar)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body.clone());
            if cross_site {
                request = request.header("sec-fetch-site", "cross-site");
            }
            let response = request.send().await?;
            assert_eq!(response.status(), 403, "{body} cross-site={cross_site}");
            let csp = response
                .headers()
                .get("content-security-policy")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        }
        let org: Value = server
            .get(&admin, &format!("/v1/organizations/{org_a}"))
            .await?;
        assert_eq!(
            org["direct_care_settings"]["max_caseload"],
            json!(25),
            "nothing changed"
        );
        // The same form with its token goes through.
        let response = server
            .http
            .post(server.url(&settings))
            .header("cookie", &jar)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("max_caseload=7&csrf={csrf}"))
            .send()
            .await?;
        assert_eq!(response.status(), 303);
        let org: Value = server
            .get(&admin, &format!("/v1/organizations/{org_a}"))
            .await?;
        assert_eq!(org["direct_care_settings"]["max_caseload"], json!(7));
        // A's admin may not post to B's settings either.
        let response = server
            .http
            .post(server.url(&format!("/console/organizations/{org_b}/settings")))
            .header("cookie", &jar)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("max_caseload=9&csrf={csrf}"))
            .send()
            .await?;
        assert_eq!(response.status(), 404);
        let org: Value = server
            .get(&admin, &format!("/v1/organizations/{org_b}"))
            .await?;
        assert_eq!(org["direct_care_settings"]["max_caseload"], json!(25));

        // A session whose token expires ends with a message. The token lives long
        // enough for a loaded machine to sign in with it.
        let short = token(
            t.url(),
            &["--org", &org_a, "--role", "admin", "--ttl", "5s"],
        )
        .await?;
        // The token was minted before the command returned, however long the
        // command took to start: its expiry is at most five seconds from now.
        let minted = tokio::time::Instant::now();
        sign_in(&browser, &server, &short).await?;
        // Past its expiry (whole seconds) and the verifier's five seconds of
        // leeway for clock skew.
        tokio::time::sleep_until(minted + Duration::from_secs(11)).await;
        browser
            .goto(&server.url(&format!("/console/organizations/{org_a}")))
            .await?;
        let text = browser.wait_for_title("Sign in").await?;
        assert!(text.contains("expired"), "{text}");
        let cookies = browser.cookies().await?;
        assert!(
            cookies.iter().all(|c| c.name() != "cairn_session"),
            "the expired session's cookie is removed"
        );
        browser.close().await?;
        Ok(())
    }
);

/// Waits until the run `workflow_id` has completed.
async fn wait_completed(server: &Server, token: &str, workflow_id: &str) -> anyhow::Result<()> {
    let started = tokio::time::Instant::now();
    loop {
        let run = server
            .get(token, &format!("/v1/workflows/{workflow_id}"))
            .await?;
        if run["status"] == "completed" {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "the run did not complete: {run}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The browser's session cookie, as a `Cookie` header, and the form token of its pages.
async fn session_jar(browser: &Browser) -> anyhow::Result<(String, String)> {
    let cookies = browser.cookies().await?;
    let session = cookies
        .iter()
        .find(|c| c.name() == "cairn_session")
        .map(|c| c.value().to_owned())
        .context("a cairn_session cookie")?;
    let csrf = browser
        .eval("return document.querySelector('input[name=csrf]')?.value ?? ''")
        .await?
        .as_str()
        .filter(|token| token.len() == 64)
        .context("a form token on the page")?
        .to_owned();
    Ok((format!("cairn_session={session}"), csrf))
}

/// Posts a console form with the browser's cookies; the response.
async fn post_form(
    server: &Server,
    jar: &str,
    path: &str,
    body: String,
) -> anyhow::Result<reqwest::Response> {
    Ok(server
        .http
        .post(server.url(path))
        .header("cookie", jar)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await?)
}

/// Whether the focused element is the error summary of a refused confirmation.
async fn error_summary_has_focus(browser: &Browser) -> anyhow::Result<bool> {
    let focused = browser
        .eval("return document.activeElement?.hasAttribute('data-error-summary') ?? false")
        .await?;
    Ok(focused == json!(true))
}

backend_test!(
    the_console_pauses_and_resumes_a_workflow_kind_and_a_handler_route_with_a_reason,
    |t: TestDb| async move {
        let (_outbox, mail) = outbox()?;
        let server = Server::start(t.url(), &mail).await?;
        let admin = token(t.url(), &["--platform-admin", "ops"]).await?;
        let accepted = server
            .bootstrap(&admin, bootstrap_request("sunrise-care"))
            .await?;
        let org = accepted["org_id"].as_str().context("an org")?.to_owned();
        let run = accepted["workflow_id"].as_str().context("a run")?;
        wait_completed(&server, &admin, run).await?;
        let browser = Browser::launch().await?;
        sign_in(&browser, &server, &admin).await?;

        // A workflow kind, paused from the runs page after a confirmation that asks why.
        browser.goto(&server.url("/console/workflows")).await?;
        browser.wait_for_title("Workflows").await?;
        let expiry = "li[data-kind='invitation_expiry']";
        browser
            .wait_for_text(&format!("{expiry} [data-kind-state]"), "active")
            .await?;
        // The probe's kind says why it cannot be paused, and offers no button.
        browser
            .wait_for_text(
                "li[data-kind='probe'] [data-kind-not-pausable]",
                "Cannot be paused",
            )
            .await?;
        browser
            .click(&format!("{expiry} a[data-action='pause-kind']"))
            .await?;
        let text = browser
            .wait_for_title("Pause every invitation_expiry run?")
            .await?;
        assert!(text.contains("stops after the step"), "{text}");
        // Without a reason nothing is done, and the page says why where the eye is.
        browser.click("button[data-action='confirm']").await?;
        browser
            .wait_for_text("[data-error-summary]", "A reason is required")
            .await?;
        assert!(
            error_summary_has_focus(&browser).await?,
            "the error summary takes the focus"
        );
        browser
            .wait_for_text("[data-field='reason']", "A reason is required")
            .await?;
        screenshot(&browser, &t, "pause-refused").await?;
        let kinds = server.get(&admin, "/v1/workflow-kinds").await?;
        assert!(
            kinds
                .as_array()
                .is_some_and(|kinds| kinds.iter().all(|k| k["paused"].is_null())),
            "nothing was paused: {kinds}"
        );
        browser.fill("#reason", "Expiry rules under review").await?;
        browser.click("button[data-action='confirm']").await?;
        browser.wait_for_text("p.notice", "is paused").await?;
        let row = browser.wait_for_text(expiry, "paused").await?;
        assert!(row.contains("Expiry rules under review"), "{row}");
        assert!(row.contains("ops"), "who paused it: {row}");
        let banner = browser
            .wait_for_text("[data-attention]", "invitation_expiry")
            .await?;
        assert!(banner.contains("Expiry rules under review"), "{banner}");
        let kinds = server.get(&admin, "/v1/workflow-kinds").await?;
        let paused = kinds
            .as_array()
            .and_then(|kinds| kinds.iter().find(|k| k["kind"] == "invitation_expiry"))
            .context("the kind")?;
        assert_eq!(
            paused["paused"]["reason"],
            json!("Expiry rules under review")
        );
        // Its runs are marked in the list.
        browser
            .goto(&server.url("/console/workflows?paused=1"))
            .await?;
        browser.wait_for_title("Workflows").await?;
        browser
            .wait_for_text("[data-run-paused]", "paused with its kind")
            .await?;
        screenshot(&browser, &t, "workflow-kinds-paused").await?;

        // Resumed the same way.
        browser
            .click(&format!("{expiry} a[data-action='resume-kind']"))
            .await?;
        let text = browser
            .wait_for_title("Resume every invitation_expiry run?")
            .await?;
        assert!(text.contains("Expiry rules under review"), "{text}");
        browser.fill("#reason", "Rules confirmed").await?;
        browser.click("button[data-action='confirm']").await?;
        browser.wait_for_text("p.notice", "resumed").await?;
        browser
            .wait_for_text(&format!("{expiry} [data-kind-state]"), "active")
            .await?;
        let kinds = server.get(&admin, "/v1/workflow-kinds").await?;
        assert!(
            kinds
                .as_array()
                .is_some_and(|kinds| kinds.iter().all(|k| k["paused"].is_null())),
            "{kinds}"
        );

        // One run, paused and resumed from its own page, which says who paused it and
        // why while it is paused.
        let runs = server
            .get(
                &admin,
                "/v1/workflows?kind=invitation_expiry&status=running",
            )
            .await?;
        let expiry_run = runs["items"][0]["id"]
            .as_str()
            .context("a running invitation_expiry run")?
            .to_owned();
        browser
            .goto(&server.url(&format!("/console/workflows/{expiry_run}")))
            .await?;
        browser.wait_for_title("Invitation expiry run").await?;
        browser.click("a[data-action='pause-run']").await?;
        browser
            .wait_for_title("Pause this invitation_expiry run?")
            .await?;
        browser.fill("#reason", "Customer asked to wait").await?;
        browser.click("button[data-action='confirm']").await?;
        let banner = browser
            .wait_for_text("[data-run-pause='run']", "Customer asked to wait")
            .await?;
        assert!(banner.contains("ops"), "{banner}");
        screenshot(&browser, &t, "run-paused").await?;
        browser.click("a[data-action='resume-run']").await?;
        browser
            .wait_for_title("Resume this invitation_expiry run?")
            .await?;
        browser.fill("#reason", "Customer is ready").await?;
        browser.click("button[data-action='confirm']").await?;
        browser.wait_for_text("p.notice", "resumed").await?;
        let run = server
            .get(&admin, &format!("/v1/workflows/{expiry_run}"))
            .await?;
        assert_eq!(run["paused"], Value::Null, "{run}");

        // A handler route: every event type of `organization`.
        browser.goto(&server.url("/console/handlers")).await?;
        browser.wait_for_title("Handlers").await?;
        let organization = "tr[data-route='organization']";
        browser
            .wait_for_text(&format!("{organization} [data-route-state]"), "applying")
            .await?;
        let dispatch = browser
            .wait_for_text("tr[data-route='dispatch']", "Cannot be paused")
            .await?;
        assert!(dispatch.contains("decisions"), "{dispatch}");
        assert_eq!(
            browser
                .eval("return document.querySelectorAll(\"tr[data-route='dispatch'] a[data-action]\").length")
                .await?,
            json!(0),
            "no button for a route that cannot be paused"
        );
        browser
            .click(&format!("{organization} a[data-action='pause']"))
            .await?;
        let text = browser
            .wait_for_title("Pause the handlers of organization?")
            .await?;
        assert!(text.contains("refused with 409"), "{text}");
        assert_eq!(
            browser
                .eval("return document.querySelector('input[name=event_type]:checked').value")
                .await?,
            json!(""),
            "every event type, unless one is chosen"
        );
        browser
            .fill("#reason", "Settings projection under repair")
            .await?;
        screenshot(&browser, &t, "pause-route").await?;
        browser.click("button[data-action='confirm']").await?;
        browser.wait_for_text("p.notice", "is paused").await?;
        let state = browser
            .wait_for_text(&format!("{organization} [data-route-state]"), "paused")
            .await?;
        assert!(
            state.contains("Settings projection under repair"),
            "{state}"
        );
        assert!(state.contains("every event type"), "{state}");
        screenshot(&browser, &t, "handlers-paused").await?;

        // Its commands are refused, in the console as in the API.
        browser
            .goto(&server.url(&format!("/console/organizations/{org}")))
            .await?;
        browser.wait_for_title("Sunrise Care").await?;
        browser.fill("#max_caseload", "12").await?;
        browser
            .click("form[action$='/settings'] button.primary")
            .await?;
        let refused = browser
            .wait_for_text("section[aria-labelledby='settings'] .alert", "paused")
            .await?;
        assert!(
            refused.contains("Settings projection under repair"),
            "{refused}"
        );
        let (jar, csrf) = session_jar(&browser).await?;
        let response = post_form(
            &server,
            &jar,
            &format!("/console/organizations/{org}/settings"),
            format!("max_caseload=13&csrf={csrf}"),
        )
        .await?;
        assert_eq!(response.status(), 409, "the paused problem's status");
        let saved = server
            .get(&admin, &format!("/v1/organizations/{org}"))
            .await?;
        assert_eq!(saved["direct_care_settings"]["max_caseload"], json!(25));

        // Every operations page says so at the top, and leads to where to act.
        browser.goto(&server.url("/console/events")).await?;
        browser.wait_for_title("Events").await?;
        let banner = browser
            .wait_for_text("[data-attention]", "organization")
            .await?;
        assert!(
            banner.contains("Settings projection under repair"),
            "{banner}"
        );
        browser
            .click("[data-attention] a[href='/console/handlers']")
            .await?;
        browser.wait_for_title("Handlers").await?;

        // Resumed: the settings save again.
        browser
            .click(&format!("{organization} a[data-action='resume']"))
            .await?;
        let text = browser
            .wait_for_title("Resume handler route organization?")
            .await?;
        assert!(text.contains("Settings projection under repair"), "{text}");
        browser.fill("#reason", "Projection repaired").await?;
        browser.click("button[data-action='confirm']").await?;
        browser.wait_for_text("p.notice", "resumed").await?;
        browser
            .wait_for_text(&format!("{organization} [data-route-state]"), "applying")
            .await?;
        let response = post_form(
            &server,
            &jar,
            &format!("/console/organizations/{org}/settings"),
            format!("max_caseload=13&csrf={csrf}"),
        )
        .await?;
        assert_eq!(response.status(), 303);
        let saved = server
            .get(&admin, &format!("/v1/organizations/{org}"))
            .await?;
        assert_eq!(saved["direct_care_settings"]["max_caseload"], json!(13));
        let paused = server.get(&admin, "/v1/handlers").await?;
        assert!(
            paused
                .as_array()
                .is_some_and(|routes| routes.iter().all(|r| r["paused"] == json!([]))),
            "{paused}"
        );

        // A pause made elsewhere (here through the API) shows on the open page live,
        // with its banner.
        browser
            .eval("window.cairnTestMarker = 'still here'; return true")
            .await?;
        browser
            .wait_for_text("[data-live-status][data-state='live']", "live")
            .await?;
        let response = server
            .http
            .post(server.url("/v1/handlers/pause"))
            .bearer_auth(&admin)
            .header("content-type", "application/json")
            .body(r#"{"stream_type":"user","event_type":"user.invited","reason":"Invitations double-counted"}"#)
            .send()
            .await?;
        assert_eq!(response.status(), 200);
        let state = browser
            .wait_for_text("tr[data-route='user'] [data-route-state]", "user.invited")
            .await?;
        assert!(state.contains("Invitations double-counted"), "{state}");
        browser
            .wait_for_text("[data-attention]", "user/user.invited")
            .await?;
        assert_eq!(
            browser.eval("return window.cairnTestMarker").await?,
            json!("still here"),
            "the pause arrived over the live feed, without a reload"
        );

        // The health page's alerts say what is paused and lead to where to act.
        browser.goto(&server.url("/console/health")).await?;
        browser.wait_for_title("Health").await?;
        let alert = browser
            .wait_for_text("li[data-alert='paused_routes']", "Paused handler routes")
            .await?;
        assert!(alert.contains("Invitations double-counted"), "{alert}");
        screenshot(&browser, &t, "health-paused").await?;
        browser
            .click("li[data-alert='paused_routes'] a[data-act]")
            .await?;
        browser.wait_for_title("Handlers").await?;

        // At a phone's width nothing runs off the side of the handlers page or of a
        // confirmation.
        browser.set_window_size(390, 844).await?;
        browser.goto(&server.url("/console/handlers")).await?;
        browser.wait_for_title("Handlers").await?;
        let over = overflowing(&browser).await?;
        assert_eq!(over, json!([]), "the handlers page overflows at 390 px");
        screenshot(&browser, &t, "handlers-phone").await?;
        browser
            .click("tr[data-route='user'] a[data-action='resume']")
            .await?;
        browser
            .wait_for_title("Resume handler route user/user.invited?")
            .await?;
        let over = overflowing(&browser).await?;
        assert_eq!(over, json!([]), "a confirmation overflows at 390 px");
        browser.close().await?;

        // Forms that are not right are refused, and write nothing: no reason (400),
        // an event type the route does not have (404), a route that cannot be paused
        // (409), a kind the engine does not run (404), a kind that cannot be paused
        // (409), no CSRF token (403).
        for (path, body, status) in [
            (
                "/console/handlers/pause",
                "stream_type=invitation&event_type=&reason=%20",
                400,
            ),
            (
                "/console/handlers/pause",
                "stream_type=invitation&event_type=invitation.lost&reason=x",
                404,
            ),
            (
                "/console/handlers/pause",
                "stream_type=dispatch&event_type=&reason=x",
                409,
            ),
            ("/console/workflow-kinds/probe/pause", "reason=x", 409),
            (
                "/console/workflow-kinds/no_such_kind/pause",
                "reason=x",
                404,
            ),
            (
                "/console/workflow-kinds/invitation_expiry/pause",
                "reason=",
                400,
            ),
        ] {
            let response = post_form(&server, &jar, path, format!("{body}&csrf={csrf}")).await?;
            assert_eq!(response.status(), status, "{path} {body}");
        }
        let response = post_form(
            &server,
            &jar,
            "/console/handlers/pause",
            "stream_type=invitation&event_type=&reason=x".to_owned(),
        )
        .await?;
        assert_eq!(response.status(), 403, "no CSRF token");
        let routes = server.get(&admin, "/v1/handlers").await?;
        let paused: Vec<&Value> = routes
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|r| r["paused"].as_array().into_iter().flatten())
            .collect();
        assert_eq!(paused.len(), 1, "only user/user.invited: {routes}");
        let kinds = server.get(&admin, "/v1/workflow-kinds").await?;
        assert!(
            kinds
                .as_array()
                .is_some_and(|kinds| kinds.iter().all(|k| k["paused"].is_null())),
            "{kinds}"
        );

        // An organization's admin sees the pauses but may not make them; a run of
        // their own they may pause.
        let org_admin = token(t.url(), &["--org", &org, "--role", "admin"]).await?;
        let tenant_jar = format!("cairn_session={org_admin}");
        let tenant_csrf = server.form_token(&tenant_jar).await?;
        let page = server
            .http
            .get(server.url("/console/handlers"))
            .header("cookie", &tenant_jar)
            .send()
            .await?
            .text()
            .await?;
        assert!(page.contains("Invitations double-counted"), "{page}");
        assert!(!page.contains("data-action=\"pause\""), "{page}");
        let response = post_form(
            &server,
            &tenant_jar,
            "/console/handlers/resume",
            format!("stream_type=user&event_type=user.invited&reason=x&csrf={tenant_csrf}"),
        )
        .await?;
        assert_eq!(response.status(), 403);
        let runs = server
            .get(
                &admin,
                "/v1/workflows?kind=invitation_expiry&status=running",
            )
            .await?;
        let own_run = runs["items"][0]["id"].as_str().context("a run")?;
        let page = server
            .http
            .get(server.url(&format!("/console/workflows/{own_run}/pause")))
            .header("cookie", &tenant_jar)
            .send()
            .await?;
        assert_eq!(
            page.status(),
            200,
            "an admin pauses the organization's runs"
        );
        Ok(())
    }
);

backend_test!(
    the_console_releases_held_streams_by_a_retry_and_by_a_skip_with_its_reason,
    |t: TestDb| async move {
        let (_outbox, mail) = outbox()?;
        let server = Server::start(t.url(), &mail).await?;
        let admin = token(t.url(), &["--platform-admin", "ops"]).await?;
        let accepted = server
            .bootstrap(&admin, bootstrap_request("sunrise-care"))
            .await?;
        let org = accepted["org_id"].as_str().context("an org")?.to_owned();
        wait_completed(
            &server,
            &admin,
            accepted["workflow_id"].as_str().context("a run")?,
        )
        .await?;
        let user = |email: &str, name: &str| {
            format!(r#"{{"org_id":"{org}","email":"{email}","name":"{name}"}}"#)
        };

        // Two people with one email: the second `user.created` fails, and the `user`
        // route holds its stream, so its role waits behind it.
        let first = new_id();
        let second = new_id();
        append(
            t.url(),
            "user",
            &first,
            "user.created",
            &user("late@example.com", "First"),
        )
        .await;
        append(
            t.url(),
            "user",
            &second,
            "user.created",
            &user("late@example.com", "Second"),
        )
        .await;
        append(
            t.url(),
            "user",
            &second,
            "user.role_assigned",
            &format!(r#"{{"org_id":"{org}","role":"viewer"}}"#),
        )
        .await;
        let events = server
            .get(&admin, &format!("/v1/events?stream_id={second}"))
            .await?;
        let failed = events["items"][0]["event_id"]
            .as_str()
            .context("the failed event")?
            .to_owned();
        let failed_position = events["items"][0]["position"].clone();
        let role = events["items"][1]["event_id"]
            .as_str()
            .context("the held event")?
            .to_owned();
        assert_eq!(events["items"][1]["held_behind"], failed_position);

        let browser = Browser::launch().await?;
        sign_in(&browser, &server, &admin).await?;

        // The failures page lists the held stream first: what it waits behind, why,
        // how many wait.
        browser.goto(&server.url("/console/failures")).await?;
        browser.wait_for_title("Failures").await?;
        let held = format!("tr[data-held='{second}']");
        let row = browser.wait_for_text(&held, "user.created").await?;
        assert!(row.contains("failed"), "{row}");
        assert!(row.contains("UNIQUE") || row.contains("unique"), "{row}");
        assert!(row.contains("1 event"), "{row}");
        let banner = browser
            .wait_for_text("[data-attention]", "1 stream held")
            .await?;
        assert!(banner.contains("1 event waiting"), "{banner}");
        screenshot(&browser, &t, "failures-held").await?;
        browser.set_window_size(390, 844).await?;
        browser.goto(&server.url("/console/failures")).await?;
        browser.wait_for_title("Failures").await?;
        let over = overflowing(&browser).await?;
        assert_eq!(over, json!([]), "the failures page overflows at 390 px");
        screenshot(&browser, &t, "failures-held-phone").await?;
        browser.set_window_size(1280, 900).await?;

        // The held event's page says what it waits behind, and what releases it.
        browser
            .goto(&server.url(&format!("/console/events/{role}")))
            .await?;
        browser.wait_for_title("Event").await?;
        browser.wait_for_text(".heading .badge", "held").await?;
        let alert = browser.wait_for_text(".alert-held", "waits behind").await?;
        assert!(
            alert.contains(&format!("position {failed_position}")),
            "{alert}"
        );
        assert!(alert.contains("retried"), "{alert}");
        screenshot(&browser, &t, "event-held").await?;
        browser
            .click(&format!(".alert-held a[href='/console/events/{failed}']"))
            .await?;
        browser
            .wait_for_title(&format!("Event {failed_position}"))
            .await?;
        // A held event cannot be skipped: the page says why, as the API would.
        let (jar, csrf) = session_jar(&browser).await?;
        let response = server
            .http
            .get(server.url(&format!("/console/events/{role}/skip")))
            .header("cookie", &jar)
            .send()
            .await?;
        assert_eq!(response.status(), 409);
        let body = response.text().await?;
        assert!(body.contains("is held behind position"), "{body}");

        // The cause fixed (the first person's email changed), a retry from the held
        // row applies the failed event, and the role held behind it.
        append(
            t.url(),
            "user",
            &first,
            "user.created",
            &user("first@example.com", "First"),
        )
        .await;
        browser.goto(&server.url("/console/failures")).await?;
        browser.wait_for_title("Failures").await?;
        browser
            .click(&format!("{held} button[data-action='retry']"))
            .await?;
        let summary = browser
            .wait_for_text("[data-retry-summary]", "retried")
            .await?;
        assert!(
            summary.contains("1 retried: 1 fixed, 0 failed again"),
            "{summary}"
        );
        let released = server.get(&admin, &format!("/v1/events/{role}")).await?;
        assert_eq!(released["held_behind"], Value::Null, "{released}");
        assert_eq!(released["processing_error"], Value::Null, "{released}");
        assert!(released["processed_at"].is_string(), "{released}");

        // A `user.activated` for a person who never existed holds its stream; the
        // `user.created` after it waits. It will never apply: it is skipped.
        let stranger = new_id();
        append(
            t.url(),
            "user",
            &stranger,
            "user.activated",
            &format!(
                r#"{{"org_id":"{org}","invitation_id":"{}"}}"#,
                uuid::Uuid::now_v7()
            ),
        )
        .await;
        append(
            t.url(),
            "user",
            &stranger,
            "user.created",
            &user("stranger@example.com", "Stranger"),
        )
        .await;
        let events = server
            .get(&admin, &format!("/v1/events?stream_id={stranger}"))
            .await?;
        let activated = events["items"][0]["event_id"]
            .as_str()
            .context("the activation")?
            .to_owned();
        let created = events["items"][1]["event_id"]
            .as_str()
            .context("the creation")?
            .to_owned();

        // An empty reason is refused with 400, and nothing is written.
        let response = post_form(
            &server,
            &jar,
            &format!("/console/events/{activated}/skip"),
            format!("reason=%20%20&csrf={csrf}"),
        )
        .await?;
        assert_eq!(response.status(), 400);
        let body = response.text().await?;
        assert!(body.contains("A reason is required"), "{body}");
        let decisions = server
            .get(&admin, "/v1/events?stream_type=dispatch&limit=200")
            .await?;
        assert!(
            decisions["items"].as_array().is_some_and(|items| items
                .iter()
                .all(|e| e["event_type"] != "dispatch.event_skipped")),
            "nothing was skipped: {decisions}"
        );
        let still = server
            .get(&admin, &format!("/v1/events/{activated}"))
            .await?;
        assert!(still["processing_error"].is_object(), "{still}");

        // In the browser: from the held row to the confirmation, which says what a skip
        // means and how many events wait.
        browser.goto(&server.url("/console/failures")).await?;
        browser.wait_for_title("Failures").await?;
        browser
            .click(&format!("tr[data-held='{stranger}'] a[data-action='skip']"))
            .await?;
        let text = browser.wait_for_title("Skip event").await?;
        assert!(text.contains("never be applied"), "{text}");
        assert!(text.contains("replay skips it too"), "{text}");
        assert!(
            text.contains("1 event of its stream waits behind it"),
            "{text}"
        );
        browser.click("button[data-action='confirm']").await?;
        browser
            .wait_for_text("[data-error-summary]", "A reason is required")
            .await?;
        assert!(error_summary_has_focus(&browser).await?);
        browser.click("[data-error-summary] a").await?;
        let focused = browser.eval("return document.activeElement?.id").await?;
        assert_eq!(focused, json!("reason"), "the summary leads to the field");
        screenshot(&browser, &t, "skip-refused").await?;
        browser
            .fill("#reason", "Activation sent by mistake: never invited")
            .await?;
        browser.click("button[data-action='confirm']").await?;

        // The event's page shows it skipped, by whom and why; its stream applied.
        browser.wait_for_text(".heading .badge", "skipped").await?;
        let decision = browser
            .wait_for_text("li[data-decision='skipped']", "never invited")
            .await?;
        assert!(decision.contains("ops"), "who skipped it: {decision}");
        browser.wait_for_text("p.notice", "skipped").await?;
        screenshot(&browser, &t, "event-skipped").await?;
        let applied = server.get(&admin, &format!("/v1/events/{created}")).await?;
        assert_eq!(applied["held_behind"], Value::Null, "{applied}");
        assert!(applied["processed_at"].is_string(), "{applied}");
        let decisions = server
            .get(&admin, "/v1/events?stream_type=dispatch&limit=200")
            .await?;
        let skipped = decisions["items"]
            .as_array()
            .and_then(|items| {
                items
                    .iter()
                    .find(|e| e["event_type"] == "dispatch.event_skipped")
            })
            .context("the skip's record")?;
        assert_eq!(
            skipped["event_data"]["reason"],
            json!("Activation sent by mistake: never invited")
        );

        // Nothing is held any more: no section, no banner.
        browser.goto(&server.url("/console/failures")).await?;
        browser.wait_for_title("Failures").await?;
        assert_eq!(
            browser
                .eval("return document.querySelectorAll('tr[data-held], [data-attention]').length")
                .await?,
            json!(0)
        );
        browser.close().await?;
        Ok(())
    }
);

backend_test!(
    the_console_erases_a_person_after_a_confirmation_and_shows_the_marker_wherever_they_appeared,
    |t: TestDb| async move {
        let (outbox, mail) = outbox()?;
        let mut server = Server::start(t.url(), &mail).await?;
        let admin = token(t.url(), &["--platform-admin", "ops"]).await?;
        let accepted = server
            .bootstrap(&admin, bootstrap_request("erasure-care"))
            .await?;
        let org = accepted["org_id"].as_str().context("org_id")?.to_owned();
        let correlation = accepted["correlation_id"]
            .as_str()
            .context("correlation_id")?
            .to_owned();
        // Every invitation is out (in the outbox) before the erasure.
        let mut sent = 0;
        for _ in 0..300 {
            sent = std::fs::read_dir(outbox.path())?.count();
            if sent >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(sent, 3, "three invitations went out");
        let users = server
            .get(&admin, &format!("/v1/organizations/{org}/users"))
            .await?;
        let grace = users["items"]
            .as_array()
            .and_then(|items| items.iter().find(|u| u["email"] == "grace@example.com"))
            .and_then(|u| u["id"].as_str())
            .context("grace")?
            .to_owned();

        let browser = Browser::launch().await?;
        sign_in(&browser, &server, &admin).await?;
        browser
            .goto(&server.url(&format!("/console/organizations/{org}")))
            .await?;
        browser.wait_for_title("Sunrise Care").await?;
        let row = format!("tr[data-person='{grace}']");
        // Once following, the page fetches itself again: nothing new has happened, so
        // nothing on it is replaced (a swap could take a click half done).
        browser
            .eval(&format!(
                "window.rowBefore = document.querySelector(\"{row}\"); return true"
            ))
            .await?;
        browser
            .wait_for_text("[data-live-status][data-state='live']", "live")
            .await?;
        browser.wait_for_fetches(1).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            browser
                .eval(&format!(
                    "return document.querySelector(\"{row}\") === window.rowBefore"
                ))
                .await?,
            json!(true),
            "a refresh that brought nothing new left the row as it was"
        );
        browser
            .click(&format!("{row} a[data-action='erase']"))
            .await?;
        browser.wait_for_title("Erase a person").await?;
        let text = browser.text().await?;
        assert!(
            text.contains("Erase Grace Hopper?") && text.contains("cannot be undone"),
            "{text}"
        );
        // No reason: refused at the field, nothing erased.
        browser.click("button.danger").await?;
        browser.wait_for_text("[data-field='reason']", "").await?;
        let status = server.get(&admin, &format!("/v1/subjects/{grace}")).await?;
        assert_eq!(status["state"], json!("active"));
        browser.fill("#reason", "Request 2026-118").await?;
        browser.click("button.danger").await?;
        browser.wait_for_text("p.notice", "erased").await?;
        let erased_row = browser.wait_for_text(&row, "erased").await?;
        assert!(!erased_row.contains("Grace"), "{erased_row}");
        screenshot(&browser, &t, "erased").await?;
        let page = browser.text().await?;
        assert!(
            !page.contains("grace@example.com") && !page.contains("Grace Hopper"),
            "{page}"
        );
        assert!(page.contains("ada@example.com"), "the others stay: {page}");

        // The event log, an event's page and the request's timeline: the marker, never
        // her name, address or a sealed envelope.
        for path in [
            "/console/events".to_owned(),
            format!("/console/traces/{correlation}"),
        ] {
            browser.goto(&server.url(&path)).await?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let text = browser.text().await?;
            assert!(
                !text.contains("grace@example.com") && !text.contains("Grace Hopper"),
                "{path}: {text}"
            );
            assert!(!text.contains("$sealed"), "{path}: {text}");
        }
        let events = server
            .get(&admin, &format!("/v1/events?stream_id={grace}"))
            .await?;
        let invited = events["items"]
            .as_array()
            .and_then(|items| items.iter().find(|e| e["event_type"] == "user.invited"))
            .context("grace's user.invited")?;
        assert_eq!(
            invited["event_data"]["email"],
            json!({"withheld": "erased"})
        );
        let event_id = invited["event_id"].as_str().context("event_id")?;
        browser
            .goto(&server.url(&format!("/console/events/{event_id}")))
            .await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let text = browser.text().await?;
        assert!(text.contains("erased"), "{text}");
        assert!(!text.contains("grace@example.com"), "{text}");

        // The API says erased; the outbox no longer holds her invitation.
        let status = server.get(&admin, &format!("/v1/subjects/{grace}")).await?;
        assert_eq!(status["state"], json!("erased"));
        assert_eq!(status["erasure"]["reason"], json!("Request 2026-118"));
        let mut left = Vec::new();
        for entry in std::fs::read_dir(outbox.path())?.filter_map(Result::ok) {
            left.push(std::fs::read_to_string(entry.path()).unwrap_or_default());
        }
        assert_eq!(left.len(), 2, "her invitation's file is removed");
        assert!(left.iter().all(|mail| !mail.contains("grace@example.com")));

        // Another person restricted until a later erasure: the page shows the marker,
        // never his name or address, and offers to erase him now.
        let alan = users["items"]
            .as_array()
            .and_then(|items| items.iter().find(|u| u["email"] == "alan@example.org"))
            .and_then(|u| u["id"].as_str())
            .context("alan")?
            .to_owned();
        let response = server
            .http
            .post(server.url(&format!("/v1/subjects/{alan}/restriction")))
            .bearer_auth(&admin)
            .json(&json!({"reason": "Records kept a year", "retain_days": 365}))
            .send()
            .await?;
        assert_eq!(response.status(), 200);
        browser
            .goto(&server.url(&format!("/console/organizations/{org}")))
            .await?;
        browser.wait_for_title("Sunrise Care").await?;
        let row = format!("tr[data-person='{alan}']");
        let restricted_row = browser.wait_for_text(&row, "restricted").await?;
        assert!(!restricted_row.contains("Alan"), "{restricted_row}");
        let page = browser.text().await?;
        assert!(
            !page.contains("alan@example.org") && !page.contains("Alan Turing"),
            "{page}"
        );
        // Disclosed for a legal claim: asked for the claim first (no name yet, and
        // none without a claim), then every field of his, on record.
        browser
            .click(&format!("{row} a[data-action='disclose']"))
            .await?;
        browser.wait_for_title("Disclose a person's data").await?;
        let text = browser.text().await?;
        assert!(text.contains("legal claim"), "{text}");
        assert!(!text.contains("alan@example.org"), "{text}");
        browser.click("button[data-action='disclose']").await?;
        browser.wait_for_text("[data-field='reason']", "").await?;
        assert!(!browser.text().await?.contains("alan@example.org"));
        browser.fill("#reason", "Claim 2026-114").await?;
        browser.click("button[data-action='disclose']").await?;
        let disclosed = browser
            .wait_for_text("[data-disclosed='restricted']", "Claim 2026-114")
            .await?;
        assert!(disclosed.contains("access log"), "{disclosed}");
        screenshot(&browser, &t, "disclosed").await?;
        let text = browser.text().await?;
        assert!(
            text.contains("alan@example.org") && text.contains("Alan Turing"),
            "{text}"
        );
        let access = server.get(&admin, &format!("/v1/subjects/{alan}")).await?;
        assert_eq!(access["state"], json!("restricted"), "{access}");
        let records = t.db().read_access(alan.parse()?, None, 100).await?;
        assert!(
            records
                .iter()
                .any(|r| r.record.via == cairn_log::AccessVia::Console
                    && r.record.resource.contains("Claim 2026-114")),
            "{records:?}"
        );
        // Back on the organization's page he is still withheld.
        browser
            .goto(&server.url(&format!("/console/organizations/{org}")))
            .await?;
        browser.wait_for_title("Sunrise Care").await?;
        browser.wait_for_text(&row, "restricted").await?;
        assert!(!browser.text().await?.contains("alan@example.org"));

        browser
            .click(&format!("{row} a[data-action='erase']"))
            .await?;
        browser.wait_for_title("Erase a person").await?;
        let text = browser.text().await?;
        assert!(text.contains("Erase this restricted person now?"), "{text}");
        assert!(!text.contains("alan@example.org"), "{text}");
        browser.close().await?;
        server.child.kill().await?;
        Ok(())
    }
);

backend_test!(
    an_open_page_follows_again_after_a_restart_and_keeps_the_keyboard_where_it_was,
    |t: TestDb| async move {
        let (_outbox, mut server, admin) = opened(&t).await?;
        let accepted = bootstrapped(&server, &admin, bootstrap_request("live-care")).await?;
        let org = accepted["org_id"].as_str().context("org_id")?.to_owned();

        let browser = Browser::launch().await?;
        sign_in(&browser, &server, &admin).await?;
        browser
            .goto(&server.url(&format!("/console/organizations/{org}")))
            .await?;
        let live = "[data-live-status][data-state='live']";
        browser.wait_for_text(live, "live").await?;
        assert_eq!(
            browser
                .eval("const a = document.querySelector('[data-live-announce]'); return a && a.getAttribute('aria-live')")
                .await?,
            json!("polite"),
            "the page announces its updates"
        );

        // The keyboard is on Ada's "Erase…" when the page refreshes itself.
        let focused = browser
            .eval(
                "const a = document.querySelector('#live a[data-action=erase]'); a.focus(); \
                 return document.activeElement.getAttribute('href')",
            )
            .await?;
        assert!(
            focused
                .as_str()
                .is_some_and(|href| href.ends_with("/erase")),
            "{focused}"
        );
        server
            .invite(&admin, &org, "Katherine Johnson", "katherine@example.com")
            .await?;
        browser.wait_for_text("#live", "Katherine Johnson").await?;
        assert_eq!(
            browser
                .eval("return document.activeElement.getAttribute('href')")
                .await?,
            focused,
            "focus stayed on the same control across the refresh"
        );
        browser
            .wait_for_text("[data-live-announce]", "Updated:")
            .await?;

        // A deploy: the server stops. The page says so at the top.
        server.stop().await?;
        let banner = browser
            .wait_for_text("[data-live-banner]", "Not live")
            .await?;
        assert!(
            browser
                .eval("return !document.querySelector('[data-live-banner]').hidden")
                .await?
                .as_bool()
                .unwrap_or(false),
            "the banner is shown: {banner}"
        );
        screenshot(&browser, &t, "not-live").await?;

        // It is back: the page follows again, and shows what happened since.
        server.start_again().await?;
        browser.wait_for_text(live, "live").await?;
        server
            .invite(&admin, &org, "Dorothy Vaughan", "dorothy@example.com")
            .await?;
        browser.wait_for_text("#live", "Dorothy Vaughan").await?;
        assert_eq!(
            browser
                .eval("return document.querySelector('[data-live-banner]').hidden")
                .await?,
            json!(true),
            "the banner is gone once the page follows again"
        );
        browser.close().await?;
        Ok(())
    }
);

/// Types `text` into the header's search box and submits it, as a person would; where
/// it lands (path, query and fragment) once the page has loaded.
async fn search(browser: &Browser, text: &str) -> anyhow::Result<String> {
    let here = "return document.readyState === 'complete' \
                ? location.pathname + location.search + location.hash : ''";
    let before = browser.eval(here).await?;
    browser.fill("#search", text).await?;
    browser.click("form.search button[type=submit]").await?;
    let started = std::time::Instant::now();
    loop {
        // Errors while the page is being replaced count as "not yet".
        let now = browser.eval(here).await.unwrap_or(Value::Null);
        if let Some(now) = now.as_str()
            && !now.is_empty()
            && now != before
        {
            return Ok(now.to_owned());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(15),
            "searching {text:?} led nowhere from {before}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The first item's field `field` of an API list.
async fn first_of(
    server: &Server,
    token: &str,
    path: &str,
    pick: impl Fn(&Value) -> bool,
    field: &str,
) -> anyhow::Result<String> {
    let listed = server.get(token, path).await?;
    listed["items"]
        .as_array()
        .and_then(|items| items.iter().find(|item| pick(item)))
        .and_then(|item| item[field].as_str())
        .map(str::to_owned)
        .with_context(|| format!("no {field} in {path}: {listed}"))
}

backend_test!(
    one_search_finds_by_email_slug_name_and_every_id_within_the_tenants_one_may_see,
    |t: TestDb| async move {
        let (_outbox, server, admin) = opened(&t).await?;
        let a = bootstrapped(&server, &admin, bootstrap_request("care-a")).await?;
        let b = bootstrapped(&server, &admin, bootstrap_request("care-b")).await?;
        let text = |v: &Value, k: &str| v[k].as_str().map(str::to_owned).context("a field");
        let (org_a, org_b) = (text(&a, "org_id")?, text(&b, "org_id")?);
        let (run_a, run_b) = (text(&a, "workflow_id")?, text(&b, "workflow_id")?);
        let correlation_a = text(&a, "correlation_id")?;
        wait_completed(&server, &admin, &run_a).await?;
        wait_completed(&server, &admin, &run_b).await?;
        let is_grace = |item: &Value| item["email"] == "grace@example.com";
        let grace_a = first_of(
            &server,
            &admin,
            &format!("/v1/organizations/{org_a}/users"),
            is_grace,
            "id",
        )
        .await?;
        let invitation_a = first_of(
            &server,
            &admin,
            &format!("/v1/organizations/{org_a}/invitations"),
            is_grace,
            "id",
        )
        .await?;
        let event_a = first_of(
            &server,
            &admin,
            &format!("/v1/events?stream_id={org_a}"),
            |_| true,
            "event_id",
        )
        .await?;

        let browser = Browser::launch().await?;
        sign_in(&browser, &server, &admin).await?;
        // Every kind of id leads to its own page.
        for (typed, lands) in [
            (
                "care-b".to_owned(),
                format!("/console/organizations/{org_b}"),
            ),
            (org_a.clone(), format!("/console/organizations/{org_a}")),
            (
                grace_a.clone(),
                format!("/console/organizations/{org_a}#person-{grace_a}"),
            ),
            (
                invitation_a.clone(),
                format!("/console/organizations/{org_a}#invitation-{invitation_a}"),
            ),
            (run_a.clone(), format!("/console/workflows/{run_a}")),
            (event_a.clone(), format!("/console/events/{event_a}")),
            (
                correlation_a.clone(),
                format!("/console/traces/{correlation_a}"),
            ),
            (
                format!("  {}  ", org_b.to_uppercase()),
                format!("/console/organizations/{org_b}"),
            ),
        ] {
            assert_eq!(search(&browser, &typed).await?, lands, "{typed:?}");
        }
        // An address two organizations share, and part of a name, list their matches.
        let listed = search(&browser, "Grace@Example.com").await?;
        assert!(listed.starts_with("/console/search?q="), "{listed}");
        assert_eq!(
            browser
                .eval("return document.querySelectorAll('[data-hit=person]').length")
                .await?,
            json!(2),
            "Grace in each organization"
        );
        search(&browser, "sunrise").await?;
        let orgs = browser
            .eval("return [...document.querySelectorAll('[data-hit=organization] a')].map(a => a.getAttribute('href'))")
            .await?;
        assert_eq!(
            orgs,
            json!([
                format!("/console/organizations/{org_a}"),
                format!("/console/organizations/{org_b}")
            ])
        );
        screenshot(&browser, &t, "search").await?;
        search(&browser, "nobody@example.com").await?;
        browser
            .wait_for_text("[data-search-empty]", "Nothing found")
            .await?;

        // An organization's admin finds their own people, and nothing of another
        // organization, not even by its ids.
        let admin_a = token(t.url(), &["--org", &org_a, "--role", "admin"]).await?;
        switch_to(&browser, &server, &admin_a).await?;
        assert_eq!(
            search(&browser, "grace@example.com").await?,
            format!("/console/organizations/{org_a}#person-{grace_a}")
        );
        for typed in [org_b.clone(), run_b.clone(), "care-b".to_owned()] {
            let landed = search(&browser, &typed).await?;
            assert!(
                landed.starts_with("/console/search?q="),
                "{typed}: {landed}"
            );
            browser
                .wait_for_text("[data-search-empty]", "Nothing found")
                .await?;
        }
        browser.close().await?;
        Ok(())
    }
);

/// The runs listed on the page, in order, by id.
async fn listed_runs(browser: &Browser) -> anyhow::Result<Vec<String>> {
    let ids = browser
        .eval("return [...document.querySelectorAll('tr[data-run]')].map(r => r.dataset.run)")
        .await?;
    Ok(serde_json::from_value(ids)?)
}

/// The count the page shows for `label`.
async fn run_count(browser: &Browser, label: &str) -> anyhow::Result<Value> {
    browser
        .eval(&format!(
            "const a = document.querySelector('[data-count=\"{label}\"] strong'); \
             return a ? Number(a.textContent) : null"
        ))
        .await
}

backend_test!(
    runs_are_newest_first_named_counted_with_timers_apart_and_show_their_input_and_result,
    |t: TestDb| async move {
        let (_outbox, server, admin) = opened(&t).await?;
        // 13 bootstraps: each is a run, and starts an expiry timer for each of its 3
        // invitations: 52 runs, more than a page.
        let mut bootstraps = Vec::new();
        for n in 0..13 {
            let accepted =
                bootstrapped(&server, &admin, bootstrap_request(&format!("care-{n}"))).await?;
            bootstraps.push(
                accepted["workflow_id"]
                    .as_str()
                    .context("a run")?
                    .to_owned(),
            );
        }
        for run in &bootstraps {
            wait_completed(&server, &admin, run).await?;
        }

        let browser = Browser::launch().await?;
        sign_in(&browser, &server, &admin).await?;
        browser.goto(&server.url("/console/workflows")).await?;
        browser.wait_for_title("Workflows").await?;
        assert_eq!(run_count(&browser, "completed").await?, json!(13));
        assert_eq!(run_count(&browser, "running").await?, json!(39));
        assert_eq!(
            run_count(&browser, "of which asleep").await?,
            json!(39),
            "the expiry timers sleep"
        );
        assert_eq!(
            run_count(&browser, "at work").await?,
            json!(0),
            "nothing is at work"
        );

        // Newest first, a page at a time, there and back.
        let first = listed_runs(&browser).await?;
        assert_eq!(first.len(), 50);
        screenshot(&browser, &t, "workflows").await?;
        let mut sorted = first.clone();
        sorted.sort_by(|a, b| b.cmp(a));
        assert_eq!(first, sorted, "newest first");
        let org_cells = browser
            .eval("return [...document.querySelectorAll('tr[data-run] td:nth-child(2)')].map(td => td.innerText.trim())")
            .await?;
        assert!(
            org_cells
                .as_array()
                .is_some_and(|cells| cells.iter().all(|c| c == "Sunrise Care")),
            "organizations by name: {org_cells}"
        );
        let timers = first.iter().filter(|id| !bootstraps.contains(id)).count();
        assert_eq!(
            browser
                .eval("return document.querySelectorAll('tr[data-run] [data-run-asleep]').length")
                .await?,
            json!(timers),
            "the sleeping timers say so, and only they"
        );
        browser.click("a[rel=next]").await?;
        browser.wait_for_text(".pager", "Newer").await?;
        let second = listed_runs(&browser).await?;
        assert_eq!(second.len(), 2);
        assert!(
            second.iter().all(|id| id < &first[49]),
            "older runs on the next page"
        );
        assert_eq!(second[1], bootstraps[0], "the oldest run last");
        browser.click("a[rel=prev]").await?;
        browser.wait_for_text(".pager", "Older").await?;
        assert_eq!(listed_runs(&browser).await?, first, "back to the newest");

        // The timers apart from work in progress.
        browser.click("[data-count='of which asleep']").await?;
        browser
            .wait_for_text("[data-count='of which asleep']", "39")
            .await?;
        let asleep = listed_runs(&browser).await?;
        assert_eq!(asleep.len(), 39);
        assert!(asleep.iter().all(|id| !bootstraps.contains(id)));

        // A run's page: its kind by name, its input and its result.
        browser
            .goto(&server.url(&format!("/console/workflows/{}", bootstraps[0])))
            .await?;
        browser.wait_for_title("Organization bootstrap run").await?;
        let input = browser
            .eval("return document.querySelector('[data-run-input] pre').textContent")
            .await?;
        assert!(
            input.as_str().is_some_and(|i| i.contains("org_id")),
            "{input}"
        );
        let output = browser
            .eval("return document.querySelector('[data-run-output] pre').textContent")
            .await?;
        assert!(
            output
                .as_str()
                .is_some_and(|o| o.contains("\"invitations_sent\": 3")),
            "{output}"
        );
        browser.close().await?;
        Ok(())
    }
);

backend_test!(
    the_health_page_says_why_plainly_and_an_organizations_admin_sees_only_their_own,
    |t: TestDb| async move {
        let (_outbox, mut server, admin) = opened(&t).await?;
        let accepted = bootstrapped(&server, &admin, bootstrap_request("care-a")).await?;
        let org_a = accepted["org_id"].as_str().context("org_id")?.to_owned();
        // An event of no organization that fails: the platform's, not A's.
        append_failing(&t).await;

        let browser = Browser::launch().await?;
        sign_in(&browser, &server, &admin).await?;
        browser.goto(&server.url("/console/health")).await?;
        let text = browser.wait_for_title("Health").await?;
        let banner = browser
            .wait_for_text("[data-health]", "Failed events")
            .await?;
        assert!(!banner.contains("cairn "), "no command to run: {banner}");
        assert_eq!(
            browser
                .eval(
                    "return document.querySelector('[data-health] [data-act]').getAttribute('href')"
                )
                .await?,
            json!("/console/failures"),
            "the banner leads to the failures"
        );
        assert!(!text.contains("1.0 failed"), "counts are whole: {text}");
        assert!(
            text.contains("10 min ago"),
            "the charts have a time axis: {text}"
        );
        let icon = browser
            .eval("return fetch(document.querySelector('link[rel=icon]').href).then(r => r.status + ' ' + r.headers.get('content-type'))")
            .await?;
        assert_eq!(icon, json!("200 image/svg+xml"), "the page has an icon");
        screenshot(&browser, &t, "health").await?;

        // A restart (every deploy) keeps the chart: its last ten minutes are read from
        // the log, where a process that only sampled would have one reading, no rate.
        server.stop().await?;
        server.start_again().await?;
        browser.goto(&server.url("/console/health")).await?;
        browser.wait_for_title("Health").await?;
        let bars = browser
            .eval("return [...document.querySelectorAll('svg.chart')[0].querySelectorAll('rect')].filter(r => Number(r.getAttribute('height')) > 0).length")
            .await?;
        assert!(
            bars.as_i64().is_some_and(|n| n > 0),
            "the bootstrap's events show after the restart: {bars}"
        );

        // A's admin: their organization's figures, named, and nothing of the rest.
        let admin_a = token(t.url(), &["--org", &org_a, "--role", "admin"]).await?;
        switch_to(&browser, &server, &admin_a).await?;
        browser.goto(&server.url("/console/health")).await?;
        let text = browser.wait_for_title("Health of Sunrise Care").await?;
        assert_eq!(
            browser
                .eval("return document.querySelector('[data-health]').dataset.health")
                .await?,
            json!("ok"),
            "another tenant's failure is not A's: {text}"
        );
        for platform in [
            "Integration probe",
            "Events per second",
            "Log head",
            "Alerts",
        ] {
            assert!(!text.contains(platform), "{platform:?} on A's page: {text}");
        }
        assert_eq!(run_count(&browser, "completed").await?, json!(1));
        assert_eq!(run_count(&browser, "of which asleep").await?, json!(3));
        screenshot(&browser, &t, "health-tenant").await?;
        browser.close().await?;
        Ok(())
    }
);

backend_test!(
    every_failure_of_a_code_is_within_reach_and_a_group_is_selected_at_once,
    |t: TestDb| async move {
        let (_outbox, server, admin) = opened(&t).await?;
        // 25 events that fail with one code: more than a group shows.
        for _ in 0..25 {
            append(
                t.url(),
                "organization",
                &new_id(),
                "organization.direct_care_settings_updated",
                r#"{"settings":{"visit_verification":true,"client_assignment":false,"max_caseload":10}}"#,
            )
            .await;
        }
        let browser = Browser::launch().await?;
        sign_in(&browser, &server, &admin).await?;
        browser.goto(&server.url("/console/failures")).await?;
        let text = browser.wait_for_title("Failures").await?;
        let shown = "return document.querySelectorAll(\"input[data-group='P9003']\").length";
        assert_eq!(browser.eval(shown).await?, json!(20), "{text}");

        // The rest is a link away.
        browser.click("a[data-all='P9003']").await?;
        browser.wait_for_title("Events").await?;
        assert_eq!(
            browser
                .eval("return document.querySelectorAll('tr.failed').length")
                .await?,
            json!(25),
            "every event of the code, on the event log"
        );

        // One tick selects the group's shown events.
        browser.goto(&server.url("/console/failures")).await?;
        browser.wait_for_title("Failures").await?;
        browser.click("input[data-select-all='P9003']").await?;
        assert_eq!(
            browser
                .eval(
                    "return document.querySelectorAll(\"input[data-group='P9003']:checked\").length"
                )
                .await?,
            json!(20)
        );
        browser
            .click("button[data-action='retry-selected']")
            .await?;
        let summary = browser
            .wait_for_text("[data-retry-summary]", "retried")
            .await?;
        assert!(summary.contains("20 retried"), "{summary}");
        browser.close().await?;
        Ok(())
    }
);

backend_test!(
    times_say_how_long_ago_with_local_and_utc_on_hover_and_the_log_keeps_milliseconds,
    |t: TestDb| async move {
        let (_outbox, server, admin) = opened(&t).await?;
        let accepted = bootstrapped(&server, &admin, bootstrap_request("care-a")).await?;
        let org = accepted["org_id"].as_str().context("org_id")?.to_owned();

        let browser = Browser::launch().await?;
        sign_in(&browser, &server, &admin).await?;
        browser
            .goto(&server.url(&format!("/console/organizations/{org}")))
            .await?;
        browser.wait_for_title("Sunrise Care").await?;
        let times = browser
            .eval(
                "return [...document.querySelectorAll('main time[datetime]')].map(t => \
                 ({text: t.textContent, title: t.title, at: t.getAttribute('datetime')}))",
            )
            .await?;
        let times = times.as_array().context("a list")?;
        assert!(
            times.len() >= 4,
            "created, sent and expiring times: {times:?}"
        );
        for time in times {
            let text = time["text"].as_str().unwrap_or_default();
            let title = time["title"].as_str().unwrap_or_default();
            assert!(
                text.contains("ago") || text.starts_with("in ") || text == "now",
                "relative: {time}"
            );
            assert!(
                title.contains("(your time)") && title.ends_with(" UTC"),
                "{time}"
            );
        }
        assert!(
            times.iter().any(|t| t["text"]
                .as_str()
                .is_some_and(|text| text.starts_with("in "))),
            "an invitation expires in days: {times:?}"
        );

        browser.goto(&server.url("/console/events")).await?;
        browser.wait_for_title("Events").await?;
        let logged = browser
            .eval("return document.querySelector('main tbody time').textContent")
            .await?;
        let logged = logged.as_str().unwrap_or_default();
        let millis = logged
            .split_once('.')
            .map(|(_, rest)| rest.chars().take_while(char::is_ascii_digit).count());
        assert_eq!(
            millis,
            Some(3),
            "the log's times to the millisecond: {logged}"
        );
        browser.close().await?;
        Ok(())
    }
);

/// Waits until `script` returns `expected` on the loaded page (errors while a page
/// is being replaced count as "not yet").
async fn wait_until(browser: &Browser, script: &str, expected: Value) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    loop {
        let seen = browser.eval(script).await.unwrap_or(Value::Null);
        if seen == expected {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(15),
            "{script} never returned {expected}; the last was {seen}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The positions the event log lists, in order.
async fn listed_positions(browser: &Browser) -> anyhow::Result<Vec<i64>> {
    let positions = browser
        .eval("return [...document.querySelectorAll('table.events tbody tr td:first-child a')].map(a => Number(a.textContent))")
        .await?;
    Ok(serde_json::from_value(positions)?)
}

backend_test!(
    the_event_log_pages_both_ways_names_organizations_and_filters_by_a_click,
    |t: TestDb| async move {
        let (_outbox, server, admin) = opened(&t).await?;
        let mut orgs = Vec::new();
        // When the third organization's bootstrap began and when it had ended.
        let mut range = (chrono::Utc::now(), chrono::Utc::now());
        for n in 0..4 {
            if n == 2 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                range.0 = chrono::Utc::now();
            }
            let accepted =
                bootstrapped(&server, &admin, bootstrap_request(&format!("log-{n}"))).await?;
            orgs.push(accepted["org_id"].as_str().context("org")?.to_owned());
            if n == 2 {
                range.1 = chrono::Utc::now();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let browser = Browser::launch().await?;
        sign_in(&browser, &server, &admin).await?;
        browser.goto(&server.url("/console/events")).await?;
        browser.wait_for_title("Events").await?;
        let first = listed_positions(&browser).await?;
        assert_eq!(first.len(), 50, "a full page");
        browser.click(".pager a[rel=next]").await?;
        browser.wait_for_text(".pager", "Newer").await?;
        let second = listed_positions(&browser).await?;
        assert!(second.first().is_some_and(|p| *p < first[49]), "{second:?}");
        browser.click(".pager a[rel=prev]").await?;
        browser.wait_for_text(".pager", "Older").await?;
        assert_eq!(
            listed_positions(&browser).await?,
            first,
            "back to where it was"
        );

        // A time range: only the events stored within it, the third organization's.
        let stamp = |at: chrono::DateTime<chrono::Utc>| {
            at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        };
        let ranged = format!(
            "/console/events?from={}&to={}",
            stamp(range.0),
            stamp(range.1)
        );
        browser.goto(&server.url(&ranged)).await?;
        browser.wait_for_title("Events").await?;
        let within = listed_positions(&browser).await?;
        assert!(!within.is_empty(), "the range holds events");
        let (jar, _) = session_jar(&browser).await?;
        let (status, _, csv_text) =
            exported(&server, &jar, &format!("{ranged}&format=csv")).await?;
        assert_eq!(status, 200);
        let rows = records(&csv_text)?;
        let exported_positions: Vec<i64> = rows[1..]
            .iter()
            .map(|row| row[0].parse())
            .collect::<Result<_, _>>()?;
        assert_eq!(
            exported_positions[..within.len()],
            within[..],
            "the page and its export list the same events"
        );
        for row in &rows[1..] {
            let at = chrono::DateTime::parse_from_rfc3339(&row[1])?.with_timezone(&chrono::Utc);
            assert!(
                at >= range.0 && at < range.1,
                "{} at {at} is outside the range",
                row[0]
            );
            assert!(
                row[3].is_empty() || row[3] == orgs[2],
                "an event of another organization: {row:?}"
            );
        }
        let (_, _, everything) = exported(&server, &jar, "/console/events?format=csv").await?;
        assert!(
            records(&everything)?.len() > rows.len() + 50,
            "the other organizations' events are outside it"
        );
        browser
            .goto(&server.url("/console/events?from=yesterday"))
            .await?;
        browser
            .wait_for_text("p.error", "from: \"yesterday\" is not a time")
            .await?;

        // A click on an organization, then on a type, filters by it.
        browser.goto(&server.url("/console/events")).await?;
        browser.wait_for_title("Events").await?;
        browser
            .click(&format!("a[data-filter=org_id][href$='{}']", orgs[3]))
            .await?;
        let field =
            "return document.readyState === 'complete' && document.getElementById('f-org').value";
        wait_until(&browser, field, json!(orgs[3])).await?;
        let cells = browser
            .eval("return [...document.querySelectorAll('table.events tbody tr td:nth-child(4)')].map(td => td.innerText.trim())")
            .await?;
        let cells = cells.as_array().context("cells")?;
        assert!(
            !cells.is_empty() && cells.iter().all(|c| c == "Sunrise Care"),
            "{cells:?}"
        );
        assert_eq!(
            browser
                .eval("return document.getElementById('f-org').value")
                .await?,
            json!(orgs[3])
        );
        browser
            .click("a[data-filter=event_type][href$='user.invited']")
            .await?;
        let field =
            "return document.readyState === 'complete' && document.getElementById('f-type').value";
        wait_until(&browser, field, json!("user.invited")).await?;
        let types = browser
            .eval("return [...new Set([...document.querySelectorAll('table.events tbody tr td:nth-child(3)')].map(td => td.innerText.trim()))]")
            .await?;
        assert_eq!(types, json!(["user.invited"]));

        // Another tenant's events, asked for by its id, are none of an admin's.
        let admin_0 = token(t.url(), &["--org", &orgs[0], "--role", "admin"]).await?;
        switch_to(&browser, &server, &admin_0).await?;
        browser
            .goto(&server.url(&format!("/console/events?org_id={}", orgs[1])))
            .await?;
        browser.wait_for_text("#live", "No event matches").await?;
        browser.close().await?;
        Ok(())
    }
);

backend_test!(
    at_a_phones_width_lists_are_cards_with_their_outcome_in_view_and_the_filters_fold,
    |t: TestDb| async move {
        let (_outbox, server, admin) = opened(&t).await?;
        let accepted = bootstrapped(&server, &admin, bootstrap_request("phone-care")).await?;
        let correlation = accepted["correlation_id"]
            .as_str()
            .context("correlation")?
            .to_owned();
        append_failing(&t).await;
        let browser = Browser::launch().await?;
        sign_in(&browser, &server, &admin).await?;
        browser.set_window_size(390, 844).await?;
        // (page, its title, a cell that must be in view)
        for (path, title, cell) in [
            ("/console/events", "Events", "td[data-label=Outcome]"),
            ("/console/failures", "Failures", "td[data-label=Error]"),
            ("/console/workflows", "Workflows", "td[data-label=Status]"),
            (
                "/console/organizations",
                "Organizations",
                "td[data-label=Status]",
            ),
        ] {
            browser.goto(&server.url(path)).await?;
            browser.wait_for_title(title).await?;
            assert_eq!(
                overflowing(&browser).await?,
                json!([]),
                "{path} overflows at 390 px"
            );
            let right = browser
                .eval(&format!(
                    "const c = document.querySelector('{cell}'); \
                     return c ? c.getBoundingClientRect().right <= window.innerWidth : null"
                ))
                .await?;
            assert_eq!(right, json!(true), "{path}: {cell} is in view");
        }
        // The event log's filters fold away; the list comes first.
        browser.goto(&server.url("/console/events")).await?;
        browser.wait_for_title("Events").await?;
        assert_eq!(
            browser
                .eval("return document.querySelector('details[data-fold-on-phone]').open")
                .await?,
            json!(false)
        );
        screenshot(&browser, &t, "events-phone").await?;
        // Targets a thumb presses are 24 px or more.
        let small = browser
            .eval(
                "return [...document.querySelectorAll('button, input[type=checkbox]')] \
                 .filter(e => e.offsetParent !== null) \
                 .map(e => e.getBoundingClientRect()) \
                 .filter(r => r.width < 24 || r.height < 24).length",
            )
            .await?;
        assert_eq!(small, json!(0), "every button and box is at least 24 px");
        // The timeline keeps its hop labels.
        browser
            .goto(&server.url(&format!("/console/traces/{correlation}")))
            .await?;
        browser.wait_for_title("Trace").await?;
        let labels = browser
            .eval("return [...document.querySelectorAll('ol.hop-labels li')].filter(l => l.offsetParent !== null && l.getBoundingClientRect().width > 40).length")
            .await?;
        assert!(
            labels.as_i64().is_some_and(|n| n > 3),
            "hop labels shown: {labels}"
        );
        assert_eq!(
            overflowing(&browser).await?,
            json!([]),
            "the timeline overflows at 390 px"
        );
        browser.close().await?;
        Ok(())
    }
);

backend_test!(
    the_organizations_list_filters_by_name_or_slug_and_status,
    |t: TestDb| async move {
        let (_outbox, server, admin) = opened(&t).await?;
        for slug in ["north-care", "south-care", "east-home"] {
            bootstrapped(&server, &admin, bootstrap_request(slug)).await?;
        }
        let browser = Browser::launch().await?;
        sign_in(&browser, &server, &admin).await?;
        let slugs = "return [...document.querySelectorAll('td[data-label=Slug]')].map(td => td.innerText.trim())";
        assert_eq!(
            browser.eval(slugs).await?,
            json!(["north-care", "south-care", "east-home"])
        );
        browser.fill("#f-q", "-CARE").await?;
        browser
            .click("form[aria-label='Filter organizations'] button")
            .await?;
        wait_until(&browser, slugs, json!(["north-care", "south-care"])).await?;
        browser.fill("#f-q", "").await?;
        browser
            .eval("document.getElementById('f-status').value = 'failed'; return true")
            .await?;
        browser
            .click("form[aria-label='Filter organizations'] button")
            .await?;
        browser
            .wait_for_text("main", "No organization matches")
            .await?;
        browser.close().await?;
        Ok(())
    }
);

/// A console list exported with the session in `jar`: the response's status, content
/// type and body.
async fn exported(server: &Server, jar: &str, path: &str) -> anyhow::Result<(u16, String, String)> {
    let response = server
        .http
        .get(server.url(path))
        .header("cookie", jar)
        .send()
        .await?;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    Ok((status, content_type, response.text().await?))
}

/// The records of a CSV export, header first.
fn records(csv_text: &str) -> anyhow::Result<Vec<Vec<String>>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(csv_text.as_bytes());
    Ok(reader
        .records()
        .map(|r| r.map(|r| r.iter().map(str::to_owned).collect()))
        .collect::<Result<_, _>>()?)
}

backend_test!(
    lists_export_as_csv_and_json_through_the_same_policy_and_a_people_export_is_on_record,
    |t: TestDb| async move {
        let (_outbox, server, admin) = opened(&t).await?;
        let mut orgs = Vec::new();
        for slug in ["care-a", "care-b"] {
            let accepted = bootstrapped(&server, &admin, bootstrap_request(slug)).await?;
            orgs.push(accepted["org_id"].as_str().context("org")?.to_owned());
        }
        append_failing(&t).await;
        let browser = Browser::launch().await?;
        sign_in(&browser, &server, &admin).await?;
        browser.goto(&server.url("/console/events")).await?;
        browser.wait_for_title("Events").await?;
        assert_eq!(
            browser
                .eval("return document.querySelector('a[data-export=csv]').getAttribute('href')")
                .await?,
            json!("/console/events?format=csv")
        );
        let (jar, _) = session_jar(&browser).await?;

        // Every event, one row each, under a header.
        let (status, content_type, body) =
            exported(&server, &jar, "/console/events?format=csv").await?;
        assert_eq!(
            (status, content_type.as_str()),
            (200, "text/csv; charset=utf-8")
        );
        let rows = records(&body)?;
        assert_eq!(rows[0][0..3], ["position", "time", "type"]);
        let mut positions: Vec<usize> = rows[1..]
            .iter()
            .map(|r| r[0].parse())
            .collect::<Result<_, _>>()?;
        positions.sort_unstable();
        assert_eq!(
            positions,
            (1..=positions.len()).collect::<Vec<_>>(),
            "every event, one row each"
        );
        assert!(positions.len() > 20, "{body}");
        // The failed ones alone.
        let (_, _, body) = exported(&server, &jar, "/console/events?failed=1&format=csv").await?;
        let failed = records(&body)?;
        assert_eq!(failed.len(), 2, "{body}");
        assert_eq!(failed[1][7], "failed");
        // Runs as JSON.
        let (status, content_type, body) =
            exported(&server, &jar, "/console/workflows?format=json").await?;
        assert_eq!((status, content_type.as_str()), (200, "application/json"));
        let runs: Vec<Value> = serde_json::from_str(&body)?;
        assert_eq!(runs.len(), 8, "2 bootstraps and 6 expiry timers");
        assert!(runs.iter().all(|r| r["organization"] == "Sunrise Care"));
        // A format it does not know is refused.
        let (status, _, _) = exported(&server, &jar, "/console/events?format=xml").await?;
        assert_eq!(status, 200, "the page, saying what is wrong");
        let (_, _, page) = exported(&server, &jar, "/console/events?format=xml").await?;
        assert!(page.contains("neither csv nor json"), "{page}");

        // An organization admin's exports hold their organization's rows only; the
        // people they export are on record as read.
        let admin_a = token(t.url(), &["--org", &orgs[0], "--role", "admin"]).await?;
        switch_to(&browser, &server, &admin_a).await?;
        let (jar_a, _) = session_jar(&browser).await?;
        let (_, _, body) = exported(&server, &jar_a, "/console/events?format=csv").await?;
        let rows = records(&body)?;
        assert!(
            rows.len() > 1 && rows[1..].iter().all(|r| r[3] == orgs[0]),
            "{body}"
        );
        let (status, _, _) = exported(
            &server,
            &jar_a,
            &format!("/console/organizations/{}?format=csv", orgs[1]),
        )
        .await?;
        assert_eq!(status, 404, "another organization's people are not found");
        let (status, content_type, body) = exported(
            &server,
            &jar_a,
            &format!("/console/organizations/{}?format=csv", orgs[0]),
        )
        .await?;
        assert_eq!(
            (status, content_type.as_str()),
            (200, "text/csv; charset=utf-8")
        );
        let people = records(&body)?;
        assert_eq!(
            people[0],
            ["user_id", "name", "email", "roles", "status", "withheld"]
        );
        let grace = people
            .iter()
            .find(|p| p[2] == "grace@example.com")
            .context("grace in the export")?;
        // The access log is written behind the response: the record comes soon.
        let started = std::time::Instant::now();
        loop {
            let output = crate::common::cairn(
                t.url(),
                &["audit", "access", "--subject", &grace[0], "--json"],
            )
            .await;
            crate::common::assert_exit(&output, 0);
            let records = crate::common::stdout(&output);
            if records.contains("members export") {
                break;
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(15),
                "no record of the export: {records}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        browser.close().await?;
        Ok(())
    }
);
