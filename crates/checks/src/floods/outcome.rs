//! A check's result: a table of numbers, the bounds it checked (PASS/FAIL), and JSON.

use anyhow::{bail, Result};
use serde_json::{json, Value};

#[derive(Debug, Default)]
pub struct Outcome {
    pub check: String,
    pub rows: Vec<(String, String)>,
    pub asserts: Vec<(String, bool)>,
    pub json: serde_json::Map<String, Value>,
}

impl Outcome {
    pub fn new(check: &str) -> Outcome {
        Outcome {
            check: check.to_string(),
            ..Outcome::default()
        }
    }

    pub fn row(&mut self, name: &str, value: impl std::fmt::Display) {
        self.rows.push((name.to_string(), value.to_string()));
    }

    pub fn val(&mut self, key: &str, value: impl serde::Serialize) {
        self.json.insert(
            key.to_string(),
            serde_json::to_value(value).unwrap_or(Value::Null),
        );
    }

    pub fn check(&mut self, what: impl Into<String>, ok: bool) {
        self.asserts.push((what.into(), ok));
    }

    /// Prints the table and the bounds; writes JSON; fails if any bound failed.
    pub fn finish(mut self, json_path: Option<&str>) -> Result<()> {
        println!("\n## {}\n", self.check);
        println!("| measure | value |\n|---|---|");
        for (k, v) in &self.rows {
            println!("| {k} | {v} |");
        }
        println!();
        let mut failed = 0;
        for (what, ok) in &self.asserts {
            println!("{} {what}", if *ok { "PASS" } else { "FAIL" });
            failed += usize::from(!ok);
        }
        let rows: Vec<Value> = self.rows.iter().map(|(k, v)| json!([k, v])).collect();
        self.json.insert("table".into(), json!(rows));
        let asserts: Vec<Value> = self
            .asserts
            .iter()
            .map(|(k, ok)| json!({"bound": k, "ok": ok}))
            .collect();
        self.json.insert("bounds".into(), json!(asserts));
        if let Some(path) = json_path {
            std::fs::write(path, serde_json::to_string_pretty(&self.json)?)?;
        }
        if failed > 0 {
            bail!("{}: {failed} bound(s) failed", self.check);
        }
        println!("{}: all {} bounds hold", self.check, self.asserts.len());
        Ok(())
    }
}
