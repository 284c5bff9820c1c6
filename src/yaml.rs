//! Reading and writing experiment files: YAML, `--set a.b.c=value` overrides, unknown keys
//! rejected with the nearest valid key suggested, ranges checked with the key path named, and
//! the resolved file written next to every run's outputs.
//!
//! Generic over the type read, so each component's config section type lives with the
//! component ([`Validate`] is how a section checks its ranges); `crate::config` composes them.
use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_yaml_ng::{Mapping, Value};
use std::path::{Path, PathBuf};

/// File name of the resolved config inside a run folder (and each of its checkpoints).
pub const RESOLVED_NAME: &str = "config.resolved.yaml";

/// A config section that checks its own values; `at` is its key path (`train`, `model.qformer`).
pub trait Validate {
    fn validate(&self, at: &str, problems: &mut Problems);
}

/// Range problems found in a config, each naming its key path.
#[derive(Debug, Default)]
pub struct Problems(Vec<String>);

impl Problems {
    /// Record `what` (e.g. "is 0; must be at least 1") against `at.key` unless `ok`.
    pub fn check(&mut self, ok: bool, at: &str, key: &str, what: impl FnOnce() -> String) {
        if !ok {
            let path = if at.is_empty() { key.to_string() } else { format!("{at}.{key}") };
            self.0.push(format!("`{path}` {}", what()));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// All problems as one error, or Ok.
    pub fn into_result(self) -> Result<()> {
        match self.0.len() {
            0 => Ok(()),
            1 => bail!("{}", self.0[0]),
            n => bail!("{n} config values are out of range:\n  {}", self.0.join("\n  ")),
        }
    }
}

/// Check a whole config.
pub fn validate<T: Validate>(config: &T) -> Result<()> {
    let mut problems = Problems::default();
    config.validate("", &mut problems);
    problems.into_result()
}

/// Read `path` as YAML and apply `overrides` (`a.b.c=value`, value parsed as YAML).
pub fn read_value(path: &Path, overrides: &[String]) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
    let mut value: Value =
        serde_yaml_ng::from_str(&text).with_context(|| format!("config {} is not valid YAML", path.display()))?;
    if value.is_null() {
        value = Value::Mapping(Mapping::new());
    }
    for item in overrides {
        apply_override(&mut value, item).with_context(|| format!("bad override `--set {item}`"))?;
    }
    Ok(value)
}

/// Read `path`, apply `overrides`, deserialize and check ranges.
pub fn load<T: DeserializeOwned + Validate>(path: &Path, overrides: &[String]) -> Result<T> {
    let config: T = from_value(read_value(path, overrides)?).with_context(|| format!("config {}", path.display()))?;
    validate(&config).with_context(|| format!("config {}", path.display()))?;
    Ok(config)
}

/// Deserialize a YAML value, turning serde's unknown-field errors into a message that names
/// the full key path and suggests the nearest valid key.
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let mut path = err.path().to_string();
        let mut inner = err.into_inner().to_string();
        // A section read through [`tagged`] reports its own path: join the two.
        while let Some((nested, rest)) = inner.strip_prefix("at `").and_then(|r| r.split_once("`: ")) {
            path = if path == "." { nested.to_string() } else { format!("{path}.{nested}") };
            inner = rest.to_string();
        }
        match suggest_for_unknown_field(&inner) {
            Some(hint) => anyhow::anyhow!("at `{path}`: {inner}{hint}"),
            None => anyhow::anyhow!("at `{path}`: {inner}"),
        }
    })
}

/// Deserialize a section tagged by a `tag` key (`model: {kind: stage2, ...}`): `build` gets the
/// tag's value and the rest of the section and reads it with [`from_value`], so error paths reach
/// inside the section (serde's own internally tagged enums lose them).
pub fn tagged<'de, D, T>(deserializer: D, tag: &str, build: impl FnOnce(&str, Value) -> Result<T>) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::de::Error;
    let mut section = match <Value as serde::Deserialize>::deserialize(deserializer)? {
        Value::Mapping(m) => m,
        other => return Err(D::Error::custom(format!("expected a section, found a {}", kind_name(&other)))),
    };
    let kind = match section.remove(tag) {
        Some(Value::String(kind)) => kind,
        Some(other) => return Err(D::Error::custom(format!("`{tag}` must be a name, found a {}", kind_name(&other)))),
        None => return Err(D::Error::custom(format!("missing field `{tag}`"))),
    };
    build(&kind, Value::Mapping(section)).map_err(|e| D::Error::custom(format!("{e:#}")))
}

/// serde words unknown fields as "unknown field `x`, expected one of `a`, `b`" (or
/// "expected `a`"); pick the closest candidate.
fn suggest_for_unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `").or_else(|| message.strip_prefix("unknown variant `"))?;
    let (unknown, expected) = rest.split_once('`')?;
    let best = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|candidate| (strsim::damerau_levenshtein(unknown, candidate), candidate))
        .min()?;
    let close_enough = best.0 <= unknown.len().max(best.1.len()) / 2 + 1;
    close_enough.then(|| format!("; did you mean `{}`?", best.1))
}

fn apply_override(root: &mut Value, item: &str) -> Result<()> {
    let (key, raw) = item.split_once('=').context("expected KEY=VALUE, e.g. train.lr=3e-4")?;
    let parts: Vec<&str> = key.trim().split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        bail!("empty key segment in `{key}`");
    }
    let parsed: Value = serde_yaml_ng::from_str(raw).with_context(|| format!("value `{raw}` is not valid YAML"))?;
    let mut node = root;
    for (i, part) in parts.iter().enumerate() {
        let map = match node {
            Value::Mapping(m) => m,
            other => bail!("`{}` is a {}, not a section", parts[..i].join("."), kind_name(other)),
        };
        let entry = map.entry(Value::String(part.to_string())).or_insert(Value::Null);
        if i + 1 == parts.len() {
            *entry = parsed;
            return Ok(());
        }
        if entry.is_null() {
            *entry = Value::Mapping(Mapping::new());
        }
        node = entry;
    }
    unreachable!("loop returns at the last key segment")
}

fn kind_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Sequence(_) => "list",
        Value::Mapping(_) => "section",
        Value::Tagged(_) => "tagged value",
    }
}

/// The leaf key paths (`a.b.c`) at which two YAML trees differ, sorted.
pub fn differing_keys(a: &Value, b: &Value) -> Vec<String> {
    fn walk(a: Option<&Value>, b: Option<&Value>, at: &str, out: &mut Vec<String>) {
        match (a, b) {
            (Some(Value::Mapping(x)), Some(Value::Mapping(y))) => {
                let mut keys: Vec<String> = x.keys().chain(y.keys()).filter_map(|k| k.as_str().map(str::to_string)).collect();
                keys.sort();
                keys.dedup();
                for key in keys {
                    let path = if at.is_empty() { key.clone() } else { format!("{at}.{key}") };
                    walk(x.get(key.as_str()), y.get(key.as_str()), &path, out);
                }
            }
            (x, y) if x == y => {}
            _ => out.push(at.to_string()),
        }
    }
    let mut out = Vec::new();
    walk(Some(a), Some(b), "", &mut out);
    out
}

/// The YAML text of `config`.
pub fn to_string<T: Serialize>(config: &T) -> Result<String> {
    serde_yaml_ng::to_string(config).context("cannot serialize the resolved config")
}

/// Write the resolved config into `dir` (atomically), so every run records what it ran.
pub fn write_resolved<T: Serialize>(config: &T, dir: &Path) -> Result<PathBuf> {
    let path = dir.join(RESOLVED_NAME);
    crate::atomic::write(&path, to_string(config)?.as_bytes())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn far_off_key_gets_no_suggestion() {
        assert_eq!(suggest_for_unknown_field("unknown field `zzzzzzzz`, expected `name` or `seed`"), None);
        assert_eq!(
            suggest_for_unknown_field("unknown field `nme`, expected one of `name`, `seed`"),
            Some("; did you mean `name`?".into())
        );
        assert_eq!(
            suggest_for_unknown_field("unknown variant `stage3`, expected `stage1` or `stage2`"),
            Some("; did you mean `stage1`?".into())
        );
    }

    #[test]
    fn override_errors_are_clear() {
        let mut v: Value = serde_yaml_ng::from_str("name: demo\n").unwrap();
        assert!(apply_override(&mut v, "seed").unwrap_err().to_string().contains("KEY=VALUE"));
        assert!(apply_override(&mut v, "name.x=1").unwrap_err().to_string().contains("`name` is a string"));
        assert!(apply_override(&mut v, "a..b=1").unwrap_err().to_string().contains("empty key"));
    }

    #[test]
    fn differing_keys_lists_leaf_paths() {
        let a: Value = serde_yaml_ng::from_str("a: {b: 1, c: [1, 2]}\nd: x\n").unwrap();
        let b: Value = serde_yaml_ng::from_str("a: {b: 2, c: [1, 2], e: 3}\nd: x\n").unwrap();
        assert_eq!(differing_keys(&a, &b), vec!["a.b", "a.e"]);
        assert!(differing_keys(&a, &a).is_empty());
    }

    #[test]
    fn problems_name_every_key_path() {
        let mut p = Problems::default();
        p.check(true, "train", "epochs", || unreachable!());
        p.check(false, "train", "epochs", || "is 0; must be at least 1".into());
        p.check(false, "", "seed", || "is bad".into());
        let err = p.into_result().unwrap_err().to_string();
        assert!(err.contains("2 config values") && err.contains("`train.epochs` is 0") && err.contains("`seed` is bad"), "{err}");
    }
}
