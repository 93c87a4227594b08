//! The README's HTTP quickstart, run as written (on a free port, in a fresh directory):
//! if it stops working, this test says so.

use std::path::Path;
use std::process::Stdio;

use crate::common::free_port;

fn quickstart() -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .expect("the README");
    let start = readme
        .find("<!-- quickstart -->")
        .expect("a quickstart block");
    let end = readme
        .find("<!-- /quickstart -->")
        .expect("the end of the quickstart block");
    let block = &readme[start..end];
    let code_start = block.find("```sh\n").expect("a sh code block") + "```sh\n".len();
    let code_end = block[code_start..]
        .find("```")
        .expect("the end of the code block")
        + code_start;
    block[code_start..code_end].to_owned()
}

#[test]
fn the_readme_quickstart_works() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_cairn"))
        .parent()
        .expect("the binary's directory")
        .to_owned();
    let port = free_port();
    let script = format!(
        "set -e\ntrap 'kill %1 2>/dev/null || true' EXIT\n{}",
        quickstart().replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"))
    );
    let output = std::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin_dir.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env_remove("CAIRN_DATABASE_URL")
        .stdin(Stdio::null())
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the quickstart failed:\n{stdout}\n{stderr}"
    );
    for expected in [
        "{\"status\":\"ready\"}",
        "\"org_id\":",
        "\"workflow_id\":",
        "\"kind\":\"organization_bootstrap\"",
        "\"code\":\"wrong_location\"",
        "token belongs in the body, not the query",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    assert!(
        stderr.contains(&format!("listening on http://127.0.0.1:{port}")),
        "{stderr}"
    );
}
