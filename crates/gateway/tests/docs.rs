//! The README's configuration table matches the real flags.

#![allow(clippy::unwrap_used)]

use clap::CommandFactory;
use gateway::Config;

#[test]
fn readme_documents_every_flag_and_variable() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let cmd = Config::command();
    for arg in cmd.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if long == "help" || long == "version" {
            continue;
        }
        let row = format!(
            "| `--{long}` | `{}` |",
            arg.get_env().unwrap().to_str().unwrap()
        );
        assert!(
            readme.contains(&row),
            "README lacks the row for --{long}: {row}"
        );
    }
}
