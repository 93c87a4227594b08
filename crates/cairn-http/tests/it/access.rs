//! Reads of people's data over HTTP leave access records, on both backends: API
//! responses (one record per response, a list naming everyone on it), console pages
//! and feed deliveries; refused and empty reads leave none; the chain verifies.

use std::time::Duration;

use axum::http::Method;
use cairn_log::{AccessVia, EventFilter, StoredAccess};
use cairn_policy::{Principal, Role};
use cairn_testkit::{TestDb, backend_test, eventually};
use cairn_types::{OrgId, UserId};

use crate::common::{self, bootstrapped, platform_admin, server, token, user};

/// The organization's people, as the log names them.
async fn people_of(s: &common::Server, org: OrgId) -> anyhow::Result<Vec<UserId>> {
    let events =
        s.t.db()
            .reader()
            .await?
            .conn()
            .read_events(&EventFilter {
                org_id: Some(org),
                limit: Some(10_000),
                ..EventFilter::default()
            })
            .await?;
    Ok(cairn_log::personal_subjects(&events).unwrap_or_default())
}

/// Every record naming `subject`, once what is queued is written.
async fn records_of(s: &common::Server, subject: UserId) -> anyhow::Result<Vec<StoredAccess>> {
    s.t.db().flush_access().await;
    Ok(s.t.db().read_access(subject, None, 1_000).await?)
}

async fn n_records(s: &common::Server) -> anyhow::Result<u64> {
    s.t.db().flush_access().await;
    Ok(s.t.db().verify_access_chain().await?.n_checked)
}

backend_test!(
    api_reads_of_people_are_on_record_one_record_per_response,
    |t: TestDb| async move {
        let s = server(t).await?;
        let org = bootstrapped(&s, "access-api").await?;
        let people = people_of(&s, org).await?;
        assert_eq!(people.len(), 2, "an admin and an invitee: {people:?}");
        let admin = user(org, Role::Admin);
        let Principal::User {
            user_id: reader, ..
        } = &admin
        else {
            unreachable!("a user")
        };
        let before = n_records(&s).await?;

        // A list of users is one record naming everyone on it.
        let reply = common::call(Method::GET, format!("/v1/organizations/{org}/users"))
            .as_(&admin)
            .send(&s.app)
            .await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        assert_eq!(n_records(&s).await?, before + 1);
        let records = records_of(&s, people[0]).await?;
        let record = &records.last().expect("a record").record;
        assert_eq!(record.via, AccessVia::Api);
        assert_eq!(record.who, format!("user:{reader}"));
        assert_eq!(record.resource, format!("organization {org} users"));
        assert_eq!(record.org_id, Some(org));
        assert_eq!(
            record.correlation_id.to_string(),
            reply.header("x-correlation-id"),
            "the record names the request"
        );
        let mut named = record.subjects.clone();
        named.sort();
        assert_eq!(named, people);

        // One user, the invitations, one invitation, the events: one record each.
        let one = people[1];
        for path in [
            format!("/v1/organizations/{org}/users/{one}"),
            format!("/v1/organizations/{org}/invitations"),
        ] {
            let reply = common::call(Method::GET, path.clone())
                .as_(&admin)
                .send(&s.app)
                .await;
            assert_eq!(reply.status, 200, "{path}: {:?}", reply.body);
        }
        let invitation = common::call(Method::GET, format!("/v1/organizations/{org}/invitations"))
            .as_(&admin)
            .send(&s.app)
            .await
            .body["items"][0]["id"]
            .as_str()
            .expect("an invitation")
            .to_owned();
        let reply = common::call(Method::GET, format!("/v1/invitations/{invitation}"))
            .as_(&admin)
            .send(&s.app)
            .await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        let reply = common::call(Method::GET, "/v1/events?limit=200")
            .as_(&platform_admin())
            .send(&s.app)
            .await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        assert_eq!(n_records(&s).await?, before + 6);
        let mut resources: Vec<String> = Vec::new();
        for person in &people {
            resources.extend(
                records_of(&s, *person)
                    .await?
                    .into_iter()
                    .map(|r| r.record.resource),
            );
        }
        assert!(resources.contains(&format!("user {one}")), "{resources:?}");
        assert!(resources.contains(&"events".to_owned()), "{resources:?}");
        assert!(
            resources.contains(&format!("invitation {invitation}")),
            "{resources:?}"
        );

        // Refused, missing and empty reads return nobody's data and leave no record.
        let before = n_records(&s).await?;
        let stranger = user(OrgId::new_v7(), Role::Admin);
        let refused = common::call(Method::GET, format!("/v1/organizations/{org}/users"))
            .as_(&stranger)
            .send(&s.app)
            .await;
        assert_eq!(refused.status, 403, "{:?}", refused.body);
        let missing = common::call(
            Method::GET,
            format!("/v1/organizations/{org}/users/{}", UserId::new_v7()),
        )
        .as_(&admin)
        .send(&s.app)
        .await;
        assert_eq!(missing.status, 404, "{:?}", missing.body);
        let empty = common::call(
            Method::GET,
            format!("/v1/organizations/{org}/users?after={}", people[1]),
        )
        .as_(&admin)
        .send(&s.app)
        .await;
        assert_eq!(empty.status, 200, "{:?}", empty.body);
        let unpersonal = common::call(Method::GET, "/v1/events?event_type=organization.created")
            .as_(&platform_admin())
            .send(&s.app)
            .await;
        assert_eq!(unpersonal.status, 200, "{:?}", unpersonal.body);
        assert_eq!(n_records(&s).await?, before);

        let report = s.t.db().verify_access_chain().await?;
        assert!(report.is_intact(), "{report:?}");
        Ok(())
    }
);

backend_test!(
    a_console_page_showing_people_is_on_record,
    |t: TestDb| async move {
        let s = server(t).await?;
        let org = bootstrapped(&s, "access-console").await?;
        let people = people_of(&s, org).await?;
        let jar = format!("cairn_session={}", token(&platform_admin()));
        let reply = common::call(Method::GET, format!("/console/organizations/{org}"))
            .header("cookie", &jar)
            .send(&s.app)
            .await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        let records = records_of(&s, people[0]).await?;
        let [stored] = records.as_slice() else {
            panic!("one record: {records:?}");
        };
        assert_eq!(stored.record.via, AccessVia::Console);
        assert_eq!(stored.record.who, "platform-admin:ops");
        assert_eq!(
            stored.record.resource,
            format!("organization {org} members")
        );
        let mut named = stored.record.subjects.clone();
        named.sort();
        assert_eq!(named, people, "the page shows the admin and the invitee");
        assert!(s.t.db().verify_access_chain().await?.is_intact());
        Ok(())
    }
);

backend_test!(
    feed_deliveries_of_people_are_on_record_per_batch,
    |t: TestDb| async move {
        let s = server(t).await?;
        let org = bootstrapped(&s, "access-feed").await?;
        let people = people_of(&s, org).await?;
        let base = s.listen().await?;
        let before = n_records(&s).await?;
        let response = reqwest::Client::new()
            .get(format!("{base}/v1/events/stream?after=0&heartbeat=1"))
            .bearer_auth(token(&user(org, Role::Admin)))
            .send()
            .await?;
        assert_eq!(response.status(), 200);
        // Read the stream as a client would, so that the server keeps sending.
        let reader = tokio::spawn(async move {
            let mut response = response;
            while let Ok(Some(_)) = response.chunk().await {}
        });
        eventually("a feed record", Duration::from_secs(10), || async {
            Ok(records_of(&s, people[0])
                .await?
                .iter()
                .any(|r| r.record.via == AccessVia::Feed))
        })
        .await?;
        reader.abort();
        let feed: Vec<StoredAccess> = records_of(&s, people[0])
            .await?
            .into_iter()
            .filter(|r| r.record.via == AccessVia::Feed)
            .collect();
        assert_eq!(feed.len(), 1, "one catch-up batch, one record: {feed:?}");
        assert!(
            feed[0].record.resource.starts_with("sse subscription "),
            "{feed:?}"
        );
        assert_eq!(feed[0].record.org_id, Some(org));
        assert_eq!(n_records(&s).await?, before + 1);
        assert!(s.t.db().verify_access_chain().await?.is_intact());
        Ok(())
    }
);
