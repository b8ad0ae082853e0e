//! Prompt presets are data: built-in ones from `presets.toml`, plus a user
//! file in the same format that adds or replaces presets by name.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

const BUILT_IN: &str = include_str!("presets.toml");

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Prompt {
    pub id: String,
    pub title: String,
    pub template: String,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    #[serde(default)]
    pub description: String,
    pub prompts: Vec<Prompt>,
}

pub type Presets = BTreeMap<String, Preset>;

fn parse(text: &str, origin: &str) -> anyhow::Result<Presets> {
    let presets: Presets = toml::from_str(text).map_err(|e| {
        // toml's message carries the line and column and shows the line.
        anyhow::anyhow!("{origin}: invalid prompts file: {e}\n  fix: each preset is a [name] table with `prompts = [ {{ id, title, template }} ]`")
    })?;
    for (name, p) in &presets {
        if p.prompts.is_empty() {
            anyhow::bail!("{origin}: preset `{name}` has no prompts");
        }
        for q in &p.prompts {
            if !q.template.contains("{document}") {
                anyhow::bail!(
                    "{origin}: preset `{name}`, prompt `{}`: the template has no {{document}} placeholder\n  fix: put {{document}} where the document's text goes",
                    q.id
                );
            }
        }
    }
    Ok(presets)
}

/// The built-in presets, with a user file's presets added or replacing them.
pub fn load(user: Option<&Path>) -> anyhow::Result<Presets> {
    let mut all = parse(BUILT_IN, "built-in presets")?;
    if let Some(path) = user {
        let text = std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!("{}: cannot read the prompts file: {e}", path.display())
        })?;
        all.extend(parse(&text, &path.display().to_string())?);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_presets_parse() {
        let p = load(None).unwrap();
        assert_eq!(p["research"].prompts.len(), 5);
        assert!(p.contains_key("summary") && p.contains_key("qa"));
    }

    #[test]
    fn malformed_file_names_line_and_column() {
        let e = parse("[x]\nprompts = [ { id = \"a\", title = }\n", "p.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("p.toml") && e.contains("line 2"), "{e}");
    }
}
