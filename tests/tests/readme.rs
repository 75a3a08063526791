//! The README stays true: its configuration table lists every key with its variable and
//! default, and its quick start is exactly the two commands.

use std::path::PathBuf;

fn readme() -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the repository root")
        .to_path_buf();
    std::fs::read_to_string(root.join("README.md")).expect("README.md")
}

#[test]
fn the_configuration_table_lists_every_key_with_its_variable_and_default() {
    let readme = readme();
    let defaults: toml::Table =
        toml::from_str(fraud_config::DEFAULTS_TOML).expect("the defaults parse");
    for field in fraud_config::Settings::documentation() {
        let row_start = format!("| `{}` | `{}` | ", field.key(), field.env_var());
        let row = readme
            .lines()
            .find(|line| line.starts_with(&row_start))
            .unwrap_or_else(|| panic!("README has no row starting `{row_start}`"));
        let default = &defaults[field.section][field.name];
        let shown = match default {
            toml::Value::String(text) => format!("`\"{text}\"`"),
            // A list of tables is too long for a cell: its count, listed elsewhere.
            toml::Value::Array(items)
                if !items.is_empty() && items.iter().all(toml::Value::is_table) =>
            {
                format!("{} entries, listed below", items.len())
            }
            other => format!("`{other}`"),
        };
        assert!(
            row.contains(&format!("| {shown} |")),
            "README's row for {} does not show the default {shown}: {row}",
            field.key()
        );
    }
}

#[test]
fn the_quick_start_is_exactly_up_and_test() {
    let readme = readme();
    let section = readme
        .split("## Quick start")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a Quick start section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a shell block in the quick start");
    let commands: Vec<&str> = block
        .lines()
        .map(|line| line.split('#').next().unwrap_or("").trim())
        .filter(|line| !line.is_empty())
        .collect();
    assert_eq!(commands, vec!["deploy/dev up", "deploy/dev test"]);
}
