//! The console's forms against a hostile page on the same site, a crafted `next`, and
//! the console's own pages for addresses and methods it has no page for: raw requests
//! to a real `cairn serve` on each backend (issue 20, points 4, 7 and 8).

use std::time::Duration;

use anyhow::Context as _;
use cairn_testkit::{TestDb, backend_test};
use serde_json::{Value, json};

use crate::common::server::Server;
use crate::common::{bootstrap_request, new_id, outbox, token};

/// An organization of its own, bootstrapped through the API and created.
async fn organization(server: &Server, admin: &str) -> anyhow::Result<String> {
    let answer = server
        .bootstrap(
            admin,
            bootstrap_request(&format!("care-{}", &new_id()[30..])),
        )
        .await?;
    let org_id = answer["org_id"]
        .as_str()
        .context("the bootstrap names its organization")?
        .to_owned();
    for _ in 0..300 {
        let org = server
            .get(admin, &format!("/v1/organizations/{org_id}"))
            .await?;
        if org["status"] == "active" {
            return Ok(org_id);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("organization {org_id} was not created")
}

async fn caseload(server: &Server, admin: &str, org_id: &str) -> anyhow::Result<Value> {
    let org = server
        .get(admin, &format!("/v1/organizations/{org_id}"))
        .await?;
    Ok(org["direct_care_settings"]["max_caseload"].clone())
}

backend_test!(
    console_forms_are_bound_to_their_session_and_their_origin,
    |t: TestDb| async move {
        let (_outbox, mail) = outbox()?;
        let server = Server::start(t.url(), &mail).await?;
        let admin = token(t.url(), &["--platform-admin", "ops"]).await?;
        let other = token(t.url(), &["--platform-admin", "someone-else"]).await?;
        let org_id = organization(&server, &admin).await?;
        let settings = format!("/console/organizations/{org_id}/settings");
        let jar = format!("cairn_session={admin}");
        let csrf = server.form_token(&jar).await?;
        let other_csrf = server.form_token(&format!("cairn_session={other}")).await?;
        assert_ne!(csrf, other_csrf, "each session has a form token of its own");
        assert_eq!(
            csrf,
            server.form_token(&jar).await?,
            "a session's token is the same on every page, in every process"
        );
        let own_origin = server.base.clone();
        let planted = "ab".repeat(32);

        // Each of these was accepted before the token was bound to the session or the
        // browser's word on where the form came from was heard.
        /// What the attempt is, its cookies, its form, and the headers its browser sends.
        type Attempt<'a> = (&'a str, String, String, Vec<(&'a str, String)>);
        let refused: [Attempt<'_>; 5] = [
            (
                "a CSRF cookie planted by a same-site page, with the form repeating it",
                format!("{jar}; cairn_csrf={planted}"),
                format!("max_caseload=7&csrf={planted}"),
                vec![],
            ),
            (
                "another session's form token",
                jar.clone(),
                format!("max_caseload=7&csrf={other_csrf}"),
                vec![],
            ),
            (
                "a form from another port of the same host",
                jar.clone(),
                format!("max_caseload=7&csrf={csrf}"),
                vec![
                    ("sec-fetch-site", "same-site".to_owned()),
                    ("origin", "http://127.0.0.1:1".to_owned()),
                ],
            ),
            (
                "an Origin of another site without Sec-Fetch-Site",
                jar.clone(),
                format!("max_caseload=7&csrf={csrf}"),
                vec![("origin", "http://evil.example".to_owned())],
            ),
            (
                "an opaque Origin",
                jar.clone(),
                format!("max_caseload=7&csrf={csrf}"),
                vec![("origin", "null".to_owned())],
            ),
        ];
        for (what, cookies, body, headers) in refused {
            let mut request = server
                .http
                .post(server.url(&settings))
                .header("cookie", cookies)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body);
            for (name, value) in headers {
                request = request.header(name, value);
            }
            let response = request.send().await?;
            assert_eq!(response.status(), 403, "{what}");
            let csp = response
                .headers()
                .get("content-security-policy")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            assert!(csp.contains("frame-ancestors 'none'"), "{what}: {csp}");
            assert_eq!(
                caseload(&server, &admin, &org_id).await?,
                json!(25),
                "{what}: nothing changed"
            );
        }

        // The console's own page, as a browser sends it, goes through.
        let response = server
            .http
            .post(server.url(&settings))
            .header("cookie", &jar)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("sec-fetch-site", "same-origin")
            .header("origin", &own_origin)
            .body(format!("max_caseload=7&csrf={csrf}"))
            .send()
            .await?;
        assert_eq!(response.status(), 303);
        assert_eq!(caseload(&server, &admin, &org_id).await?, json!(7));

        // Signing in from a same-site page with a planted token is refused too, and
        // leaves no session behind.
        let response = server
            .http
            .post(server.url("/console/sign-in"))
            .header("cookie", format!("cairn_csrf={planted}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("sec-fetch-site", "same-site")
            .body(format!("token={admin}&next=%2Fconsole&csrf={planted}"))
            .send()
            .await?;
        assert_eq!(response.status(), 403);
        assert!(
            response
                .headers()
                .get_all("set-cookie")
                .iter()
                .all(|c| { !c.to_str().unwrap_or_default().starts_with("cairn_session=") })
        );
        Ok(())
    }
);

backend_test!(
    over_https_the_console_cookies_are_host_only,
    |t: TestDb| async move {
        let (_outbox, mail) = outbox()?;
        let server = Server::start(t.url(), &mail).await?;
        let admin = token(t.url(), &["--platform-admin", "ops"]).await?;
        let sign_in = server
            .http
            .get(server.url("/console/sign-in"))
            .header("x-forwarded-proto", "https")
            .send()
            .await?;
        let anonymous = sign_in
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .context("a cookie for the sign-in form")?
            .to_owned();
        assert!(anonymous.starts_with("__Host-cairn_csrf="), "{anonymous}");
        let planted = anonymous
            .trim_start_matches("__Host-cairn_csrf=")
            .split(';')
            .next()
            .unwrap_or_default()
            .to_owned();
        let response = server
            .http
            .post(server.url("/console/sign-in"))
            .header("x-forwarded-proto", "https")
            .header("cookie", format!("__Host-cairn_csrf={planted}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={admin}&next=%2Fconsole&csrf={planted}"))
            .send()
            .await?;
        assert_eq!(response.status(), 303);
        let session = response
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|c| c.contains("cairn_session="))
            .context("a session cookie")?
            .to_owned();
        assert!(session.starts_with("__Host-cairn_session="), "{session}");
        for attribute in ["Secure", "Path=/", "HttpOnly", "SameSite=Strict"] {
            assert!(session.contains(attribute), "{attribute}: {session}");
        }
        assert!(!session.contains("Domain"), "{session}");
        // Over https, a cookie without the prefix (which any sibling could set) is no
        // session.
        let response = server
            .http
            .get(server.url("/console/events"))
            .header("x-forwarded-proto", "https")
            .header("cookie", format!("cairn_session={admin}"))
            .send()
            .await?;
        assert_eq!(response.status(), 303);
        let response = server
            .http
            .get(server.url("/console/events"))
            .header("x-forwarded-proto", "https")
            .header("cookie", format!("__Host-cairn_session={admin}"))
            .send()
            .await?;
        assert_eq!(response.status(), 200);
        Ok(())
    }
);

backend_test!(
    a_crafted_next_falls_back_to_the_console,
    |t: TestDb| async move {
        let (_outbox, mail) = outbox()?;
        let server = Server::start(t.url(), &mail).await?;
        let admin = token(t.url(), &["--platform-admin", "ops"]).await?;
        let page = server
            .http
            .get(server.url("/console/sign-in?next=%2Fconsole%0A"))
            .send()
            .await?;
        assert_eq!(page.status(), 200);
        let csrf_cookie = page
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|c| c.split(';').next())
            .context("a CSRF cookie")?
            .to_owned();
        let csrf = csrf_cookie.trim_start_matches("cairn_csrf=").to_owned();
        let html = page.text().await?;
        assert!(
            html.contains("name=\"next\" value=\"/console\""),
            "the form leads to the console: {html}"
        );
        for next in [
            "%2Fconsole%0A",
            "%2Fconsole%0D%0ASet-Cookie%3A%20x%3D1",
            "%2Fconsole%7F",
        ] {
            let response = server
                .http
                .post(server.url("/console/sign-in"))
                .header("cookie", &csrf_cookie)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!("token={admin}&next={next}&csrf={csrf}"))
                .send()
                .await?;
            assert_eq!(response.status(), 303, "{next}");
            assert_eq!(
                response
                    .headers()
                    .get("location")
                    .and_then(|v| v.to_str().ok()),
                Some("/console"),
                "{next}"
            );
        }
        Ok(())
    }
);

backend_test!(
    the_console_answers_for_its_own_addresses,
    |t: TestDb| async move {
        let (_outbox, mail) = outbox()?;
        let server = Server::start(t.url(), &mail).await?;
        for (method, path, status) in [
            ("GET", "/console/no-such-page", 404),
            ("GET", "/console/organizations/x/y/z", 404),
            ("POST", "/console/no-such-page", 404),
            ("DELETE", "/console/events", 405),
            ("PUT", "/console/sign-in", 405),
        ] {
            let response = server
                .http
                .request(method.parse()?, server.url(path))
                .send()
                .await?;
            assert_eq!(response.status(), status, "{method} {path}");
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned()
            };
            assert!(
                header("content-type").starts_with("text/html"),
                "{method} {path}"
            );
            assert!(
                header("content-security-policy").contains("default-src 'none'"),
                "{method} {path}"
            );
            assert_eq!(header("x-frame-options"), "DENY", "{method} {path}");
            assert_eq!(header("referrer-policy"), "same-origin", "{method} {path}");
            assert_eq!(
                header("x-content-type-options"),
                "nosniff",
                "{method} {path}"
            );
            assert_eq!(header("cache-control"), "no-store", "{method} {path}");
            let page = response.text().await?;
            assert!(page.contains("<html"), "{method} {path}: {page}");
        }
        // The API's addresses still answer in problem+json.
        let response = server
            .http
            .get(server.url("/v1/no-such-thing"))
            .send()
            .await?;
        assert_eq!(response.status(), 404);
        assert_eq!(
            response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/problem+json")
        );
        Ok(())
    }
);
