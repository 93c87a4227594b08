//! Upgrades, on both backends: every database an earlier release wrote opens with this
//! build, migrates, verifies, and carries on where that release stopped.
//!
//! The databases are the fixtures under `tests/fixtures/upgrade/`, a directory per
//! release, each written by that release's own binary with
//! `scripts/make-upgrade-fixture` and never edited afterwards (its `MANIFEST.md` says
//! what it holds; its `manifest.json` says the same for this test). Each is restored
//! unmigrated, and then this build's binary, as an operator would run it after an
//! upgrade, migrates it, verifies the projections and the hash chain against the old
//! signed checkpoint, and finishes the workflow runs the old release left in flight.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use cairn_testkit::{Backend, TestDb, backend_test};
use serde_json::Value;

use crate::common::{assert_exit, cairn_in, json_of, outbox};

/// Every fixture directory, oldest release first (by name).
fn fixtures() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/upgrade");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.is_dir())
        .collect();
    dirs.sort();
    assert!(
        !dirs.is_empty(),
        "no upgrade fixtures in {}",
        root.display()
    );
    dirs
}

fn str_of<'a>(value: &'a Value, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {value}"))
}

fn list<'a>(value: &'a Value, what: &str) -> &'a [Value] {
    value
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("{what} is not a list: {value}"))
}

/// A path in the fixture, as a string for the command line.
fn in_fixture(fixture: &Path, relative: &str) -> String {
    let path = fixture.join(relative);
    assert!(path.is_file(), "{} is missing", path.display());
    path.display().to_string()
}

backend_test!(
    databases_earlier_releases_wrote_open_verify_and_finish_their_runs,
    unmigrated,
    |backend: Backend, name: &'static str| async move {
        let key = match backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        };
        for fixture in fixtures() {
            let manifest: Value =
                serde_json::from_str(&std::fs::read_to_string(fixture.join("manifest.json"))?)?;
            let expected = &manifest["backends"][key];
            let source = fixture.join(str_of(&expected["database"], "database"));
            eprintln!(
                "upgrading the {key} database of {} ({})",
                fixture.display(),
                str_of(&manifest["release"], "release")
            );
            let t = TestDb::restore(backend, name, &source).await?;
            if let Err(error) = upgrade(&t, &fixture, expected).await {
                t.keep(&format!("{error:#}"));
                return Err(error.context(format!("the fixture {}", fixture.display())));
            }
        }
        Ok(())
    }
);

/// Runs `cairn` on a restored database, with its fixture's personal-data key when its
/// release sealed personal data (`pii.key` beside the manifest).
async fn cairn_on(fixture: &Path, url: &str, args: &[&str]) -> std::process::Output {
    // In place of the tests' own key.
    let key = std::fs::read_to_string(fixture.join("pii.key")).ok();
    let env: Vec<(&str, &str)> = key
        .iter()
        .map(|key| ("CAIRN_PII_KEY", key.as_str()))
        .collect();
    cairn_in(url, args, &env, None).await
}

/// What an operator runs after an upgrade, and what must then hold.
async fn upgrade(t: &TestDb, fixture: &Path, expected: &Value) -> anyhow::Result<()> {
    let url = t.url();

    // Any command opens the database through the migrations: `status` brings it up
    // to this build's schema.
    let status = cairn_on(fixture, url, &["status", "--json"]).await;
    assert_exit(&status, 0);
    let status = json_of(&status);
    let applied: BTreeSet<String> = t
        .db()
        .reader()
        .await?
        .conn()
        .fetch_all("SELECT id FROM cairn_migrations", cairn_log::args![])
        .await?
        .iter()
        .map(|row| row.get::<String>("id"))
        .collect::<Result<_, _>>()?;
    for migration in cairn_domain::all_migrations().into_iter().flatten() {
        anyhow::ensure!(
            applied.contains(migration.id),
            "the migration {} was not applied",
            migration.id
        );
    }
    let checkpoint = &expected["checkpoint"];
    let signed = checkpoint["position"]
        .as_i64()
        .ok_or_else(|| anyhow::anyhow!("the checkpoint names no position: {checkpoint}"))?;
    anyhow::ensure!(
        status["head_position"]
            .as_i64()
            .is_some_and(|head| head >= signed),
        "the log is shorter than its checkpoint (position {signed}): {status}"
    );

    // The projections are what the old log produces with this build's handlers, and
    // the hash chain still holds the head the old release signed.
    assert_exit(&cairn_on(fixture, url, &["replay", "--verify"]).await, 0);
    let checkpoint_file = in_fixture(fixture, str_of(&checkpoint["file"], "checkpoint.file"));
    let public_key = in_fixture(fixture, "audit.pub");
    let audit = [
        "audit",
        "verify",
        "--checkpoint",
        &checkpoint_file,
        "--public-key",
        &public_key,
    ];
    assert_exit(&cairn_on(fixture, url, &audit).await, 0);

    // Every stored event reads as the current version of its type, those stored at
    // an older version (the first release's `user.invited`) through their upcasters.
    let checked = cairn_on(fixture, url, &["contracts", "check-log", "--json"]).await;
    assert_exit(&checked, 0);
    let checked = json_of(&checked);
    assert_eq!(checked["n_failed"], 0, "{checked}");
    let older: u64 = list(&checked["versions"], "versions")
        .iter()
        .filter(|v| {
            v["current_version"]
                .as_u64()
                .is_some_and(|current| v["stored_version"].as_u64() < Some(current))
        })
        .filter_map(|v| v["n_events"].as_u64())
        .sum();
    assert_eq!(
        checked["n_upcast"].as_u64(),
        Some(older),
        "every event stored at an older version is upcast: {checked}"
    );

    // Every unfinished run's history still fits the definition it began on: the
    // bootstrap killed in flight is organization_bootstrap v1 (email step names) in
    // the first release's fixture, v2 (ids) in later ones.
    let fits = cairn_on(fixture, url, &["workflows", "check", "--json"]).await;
    assert_exit(&fits, 0);

    // The definition each run left in flight began on, as the old release recorded it.
    let mut began_on = BTreeMap::new();
    for in_flight in list(&expected["in_flight"], "in_flight") {
        let id = str_of(&in_flight["run_id"], "run_id");
        let shown = json_of(&cairn_on(fixture, url, &["workflows", "show", id, "--json"]).await);
        began_on.insert(id.to_owned(), shown["definition_version"].clone());
    }

    // The engine finishes the runs the old release left: the one killed in flight
    // goes on from its last recorded step, and the one never started runs.
    let (outbox, mail) = outbox()?;
    assert_exit(
        &cairn_on(
            fixture,
            url,
            &["--mail-url", &mail, "workflows", "run", "--until-idle"],
        )
        .await,
        0,
    );

    let runs = json_of(
        &cairn_on(
            fixture,
            url,
            &["workflows", "list", "--limit", "10000", "--json"],
        )
        .await,
    );
    let now = chrono::Utc::now();
    for run in list(&runs, "the runs") {
        let status = str_of(&run["status"], "status");
        let asleep_until_expiry = status == "running"
            && run["kind"] == "invitation_expiry"
            && run["next_run_at"]
                .as_str()
                .and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok())
                .is_some_and(|at| at > now);
        anyhow::ensure!(
            status == "completed" || asleep_until_expiry,
            "a run is not finished (none may run but the invitation expiry timers): {run}"
        );
    }
    for in_flight in list(&expected["in_flight"], "in_flight") {
        let id = str_of(&in_flight["run_id"], "run_id");
        let shown = json_of(&cairn_on(fixture, url, &["workflows", "show", id, "--json"]).await);
        anyhow::ensure!(
            shown["status"] == "completed",
            "the run left in flight did not complete: {shown}"
        );
        // It finished on the definition it began on.
        anyhow::ensure!(
            began_on
                .get(id)
                .is_some_and(|v| v.is_u64() && *v == shown["definition_version"]),
            "the run left in flight changed definition (it began on {:?}): {shown}",
            began_on.get(id)
        );
        let steps = list(&shown["steps"], "steps");
        let before = list(&in_flight["steps"], "in_flight.steps");
        let names = |steps: &[Value]| -> Vec<String> {
            steps
                .iter()
                .map(|step| str_of(&step["name"], "step name").to_owned())
                .collect()
        };
        anyhow::ensure!(
            names(steps).starts_with(&names(before)),
            "the run's recorded steps changed: {:?} before, {:?} now",
            names(before),
            names(steps)
        );
        anyhow::ensure!(
            steps.iter().all(|step| step["status"] == "completed"),
            "a step of the run left in flight did not complete: {shown}"
        );
    }
    for waiting in list(&expected["not_started"], "not_started") {
        let id = str_of(&waiting["run_id"], "run_id");
        let shown = json_of(&cairn_on(fixture, url, &["workflows", "show", id, "--json"]).await);
        anyhow::ensure!(
            shown["status"] == "completed",
            "the run never started did not complete: {shown}"
        );
    }

    // The invitations the old release settled keep their states; those of the runs
    // finished here are pending, and mailed here unless the old release had mailed
    // them already.
    let rows = t
        .db()
        .reader()
        .await?
        .conn()
        .fetch_all(
            "SELECT i.id, i.email, i.status, o.slug FROM invitations i
             JOIN organizations o ON o.id = i.org_id",
            cairn_log::args![],
        )
        .await?;
    let mut now_by_id = BTreeMap::new();
    for row in &rows {
        now_by_id.insert(
            row.get::<uuid::Uuid>("id")?.to_string(),
            (
                row.get::<String>("slug")?,
                row.get::<String>("email")?,
                row.get::<String>("status")?,
            ),
        );
    }
    let mut settled = BTreeSet::new();
    for invitation in list(&expected["invitations"], "invitations") {
        let id = str_of(&invitation["invitation_id"], "invitation_id");
        let (_, email, status) = now_by_id
            .get(id)
            .ok_or_else(|| anyhow::anyhow!("the invitation {id} is gone"))?;
        anyhow::ensure!(
            status == str_of(&invitation["status"], "status"),
            "the invitation to {email} was {} and is {status}",
            invitation["status"]
        );
        settled.insert(id);
    }
    // A send step is named after its address (bootstrap definition 1) or its
    // invitation's id (definition 2 on).
    let mailed_before: BTreeSet<&str> = list(&expected["in_flight"], "in_flight")
        .iter()
        .flat_map(|run| list(&run["steps"], "steps"))
        .filter_map(|step| step["name"].as_str()?.strip_prefix("send_invitation:"))
        .map(|sent| {
            now_by_id
                .get(sent)
                .map_or(sent, |(_, email, _)| email.as_str())
        })
        .collect();
    let mut to_mail_here = Vec::new();
    for (id, (slug, email, status)) in &now_by_id {
        if settled.contains(id.as_str()) {
            continue;
        }
        anyhow::ensure!(
            status == "pending",
            "the invitation to {email} of {slug}, whose run finished here, is {status}"
        );
        if !mailed_before.contains(email.as_str()) {
            to_mail_here.push(email.clone());
        }
    }
    to_mail_here.sort();
    let mut mailed_here: Vec<String> = std::fs::read_dir(outbox.path())?
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().ends_with(".eml"))
        .map(|entry| std::fs::read_to_string(entry.path()).unwrap_or_default())
        .map(|raw| {
            let to = cairn_testkit::smtp_parse(&raw).to;
            // `"Name" <address>`: the address.
            to.rsplit_once('<')
                .map_or(to.as_str(), |(_, address)| address.trim_end_matches('>'))
                .to_owned()
        })
        .collect();
    mailed_here.sort();
    anyhow::ensure!(
        mailed_here == to_mail_here,
        "mailed here: {mailed_here:?}; expected each new invitation once, and none the old \
         release had mailed: {to_mail_here:?}"
    );

    // The failed events stay failed, and the event held behind one stays held: an
    // upgrade neither applies nor drops them.
    for failed in list(&expected["failed_events"], "failed_events") {
        let position = failed["position"].to_string();
        let shown =
            json_of(&cairn_on(fixture, url, &["events", "show", &position, "--json"]).await);
        anyhow::ensure!(
            shown["processing_error"]["code"] == failed["code"],
            "event {position} was failed {} and is now {shown}",
            failed["code"]
        );
    }
    for held in list(&expected["held_events"], "held_events") {
        let position = held["position"].to_string();
        let shown =
            json_of(&cairn_on(fixture, url, &["events", "show", &position, "--json"]).await);
        anyhow::ensure!(
            shown["held_behind"] == held["behind"],
            "event {position} was held behind {} and is now {shown}",
            held["behind"]
        );
    }

    // What the engine wrote on top of the old log verifies too.
    assert_exit(&cairn_on(fixture, url, &["replay", "--verify"]).await, 0);
    assert_exit(&cairn_on(fixture, url, &audit).await, 0);
    Ok(())
}
