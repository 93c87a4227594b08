//! The web console in a real browser (headless Chromium through chromedriver), against
//! a real `cairn serve` on each backend and, for onboarding, a real SMTP server.
//!
//! Each test saves screenshots of the pages it visits to `target/console/` (from the
//! SQLite run), which the README shows.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use cairn_testkit::{Backend, TestDb, backend_test};
use cairn_testkit::{SinkOptions, SmtpSink};
use common::browser::Browser;
use common::server::Server;
use common::{assert_exit, bootstrap_request, cairn, stdout};
use serde_json::{Value, json};

async fn token(url: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut all = vec!["token"];
    all.extend_from_slice(args);
    let output = cairn(url, &all).await;
    assert_exit(&output, 0);
    Ok(stdout(&output).trim().to_owned())
}

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
async fn sign_in(browser: &Browser, server: &Server, token: &str) -> anyhow::Result<()> {
    browser.goto(&server.url("/console/sign-in")).await?;
    browser.wait_for_title("Sign in").await?;
    browser.fill("#token", token).await?;
    browser
        .click("form[action='/console/sign-in'] button[type=submit]")
        .await?;
    Ok(())
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
        browser.wait_for_title("organization_bootstrap").await?;
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
        browser.wait_for_text("[data-live-status]", "live").await?;
        browser
            .eval("window.cairnTestMarker = 'still here'; return true")
            .await?;
        screenshot(&browser, &t, "bootstrap-running").await?;
        sink.release(1)?;
        browser
            .wait_for_text("[data-run-status]", "completed")
            .await?;
        let text = browser.text().await?;
        assert!(text.contains("send_invitation:grace@example.com"), "{text}");
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
            .wait_for_text(&format!("{grace} [data-delivery]"), "sent 1×")
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
            .wait_for_text(&format!("{grace} [data-delivery]"), "sent 2×")
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

/// The one organization the API lists.
async fn listed_org(server: &Server, token: &str) -> anyhow::Result<String> {
    let listed = server.get(token, "/v1/organizations").await?;
    Ok(listed["items"][0]["id"]
        .as_str()
        .context("an organization")?
        .to_owned())
}

async fn append(url: &str, stream_type: &str, stream_id: &str, event_type: &str, data: &str) {
    let output = cairn(
        url,
        &[
            "events",
            "append",
            "--stream-type",
            stream_type,
            "--stream-id",
            stream_id,
            "--type",
            event_type,
            "--data",
            data,
        ],
    )
    .await;
    assert_exit(&output, 0);
}

backend_test!(
    the_console_retries_failures_and_draws_a_timeline,
    |t: TestDb| async move {
        let outbox = tempfile::tempdir()?;
        let server = Server::start(t.url(), &format!("outbox:{}", outbox.path().display())).await?;
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
        let missing = uuid::Uuid::now_v7().to_string();
        append(
            t.url(),
            "organization",
            &missing,
            "organization.direct_care_settings_updated",
            r#"{"settings":{"visit_verification":true,"client_assignment":false,"max_caseload":10}}"#,
        )
        .await;
        let hostile = r#"{"note":"<script>window.cairnOwned=1</script>\"><img src=x onerror=\"window.cairnOwned=2\">"}"#;
        append(
            t.url(),
            "gadget",
            &uuid::Uuid::now_v7().to_string(),
            "gadget.made",
            hostile,
        )
        .await;

        let browser = Browser::launch().await?;
        sign_in(&browser, &server, &admin).await?;
        browser.wait_for_title("Organizations").await?;

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

        // Retrying every event of a code that cannot be fixed says what failed again.
        browser.goto(&server.url("/console/failures")).await?;
        browser.wait_for_title("Failures").await?;
        browser
            .click("button[name='retry_code'][value='P9002']")
            .await?;
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

        browser.goto(&server.url("/console/workflows")).await?;
        let text = browser.wait_for_title("Workflows").await?;
        assert!(text.contains("organization_bootstrap"), "{text}");
        screenshot(&browser, &t, "workflows").await?;
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
        let outbox = tempfile::tempdir()?;
        let server = Server::start(t.url(), &format!("outbox:{}", outbox.path().display())).await?;
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
        sign_in(&browser, &server, &admin_a).await?;
        let text = browser.wait_for_title("Organizations").await?;
        assert_eq!(
            text.matches("Sunrise Care").count(),
            1,
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
        let csrf = cookies
            .iter()
            .find(|c| c.name() == "cairn_csrf")
            .context("a CSRF cookie")?
            .value()
            .to_owned();
        let jar = format!("cairn_session={}; cairn_csrf={csrf}", session.value());
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
        let minted = tokio::time::Instant::now();
        let short = token(
            t.url(),
            &["--org", &org_a, "--role", "admin", "--ttl", "5s"],
        )
        .await?;
        sign_in(&browser, &server, &short).await?;
        browser.wait_for_title("Organizations").await?;
        // Past its expiry and the verifier's five seconds of leeway for clock skew.
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
