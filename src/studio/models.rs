//! Model lists as each kind of studio answers them, and model names as
//! Ollama matches them.

use serde_json::Value;

/// Ids from an OpenAI `{"data":[{"id":...}]}` model list; `None` if the
/// body is not one (LM Studio answers 200 with an error object on paths it
/// does not know, so a 200 alone proves nothing).
pub(crate) fn parse_openai_models(body: &[u8]) -> Option<Vec<String>> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let data = v.get("data")?.as_array()?;
    data.iter()
        .map(|m| m.get("id").and_then(Value::as_str).map(str::to_string))
        .collect()
}

/// LM Studio's `/api/v0/models`: `(id, state)` pairs, state such as
/// `loaded` or `not-loaded`.
pub(crate) fn parse_lmstudio_models(body: &[u8]) -> Option<Vec<(String, String)>> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let data = v.get("data")?.as_array()?;
    data.iter()
        .map(|m| {
            let id = m.get("id")?.as_str()?.to_string();
            let state = m
                .get("state")
                .and_then(Value::as_str)
                .unwrap_or("unknown")
                .to_string();
            Some((id, state))
        })
        .collect()
}

/// Ollama's `/api/tags`: model names.
pub(crate) fn parse_ollama_tags(body: &[u8]) -> Option<Vec<String>> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let models = v.get("models")?.as_array()?;
    models
        .iter()
        .map(|m| {
            m.get("name")
                .or_else(|| m.get("model"))
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .collect()
}

/// Whether `served` names `wanted`, allowing Ollama's implicit `:latest`.
pub(crate) fn model_matches(served: &str, wanted: &str) -> bool {
    served == wanted
        || served.strip_suffix(":latest") == Some(wanted)
        || wanted.strip_suffix(":latest") == Some(served)
}
