//! `LinuxResources` read from JSON, naming what is wrong; keys the runtime spec does
//! not know are warnings.

use oci_spec::runtime::LinuxResources;

use super::{known_keys, ResourceError};

/// `LinuxResources` parsed from JSON, with warnings for keys the runtime spec does not know.
#[derive(Debug, Clone)]
pub struct Parsed {
    /// The resources.
    pub resources: LinuxResources,
    /// One line per unknown key (`resources.cpu.peroid`), also logged with `tracing`.
    pub warnings: Vec<String>,
}

/// Parses a `LinuxResources` JSON object, naming what is wrong; unknown keys are
/// warnings (see [`Parsed`]).
///
/// `pids` is read from the JSON key itself: the runtime spec makes `limit` optional
/// and 0 a real limit, which the `oci-spec` type cannot tell apart (absent reads as
/// 0). A `pids` object without `limit` is dropped here, so it changes nothing.
pub fn parse_value(mut v: serde_json::Value) -> Result<Parsed, ResourceError> {
    let shown: String = v.to_string().chars().take(200).collect();
    let Some(obj) = v.as_object_mut() else {
        return Err(ResourceError::OutOfRange {
            field: "resources",
            value: shown,
            reason: "not an OCI LinuxResources object: not a JSON object".into(),
        });
    };
    let mut warnings = Vec::new();
    for (section, known) in known_keys() {
        let map = if section.is_empty() {
            Some(&*obj)
        } else {
            obj.get(section).and_then(|s| s.as_object())
        };
        for k in map.into_iter().flat_map(|m| m.keys()) {
            if !known.contains(&k.as_str()) {
                let path = if section.is_empty() {
                    format!("resources.{k}")
                } else {
                    format!("resources.{section}.{k}")
                };
                let hint = crate::suggest::nearest(k, &known)
                    .map(|n| format!(" (did you mean {n:?}?)"))
                    .unwrap_or_default();
                warnings.push(format!("unknown key {path}{hint}: ignored"));
            }
        }
    }
    if obj
        .get("pids")
        .is_some_and(|p| p.is_null() || p.as_object().is_some_and(|p| !p.contains_key("limit")))
    {
        obj.remove("pids");
    }
    let text = v.to_string();
    let resources: LinuxResources =
        serde_json::from_value(v).map_err(|e| ResourceError::OutOfRange {
            field: "resources",
            value: text.chars().take(200).collect(),
            reason: format!("not an OCI LinuxResources object: {e}"),
        })?;
    for w in &warnings {
        tracing::warn!("{w}");
    }
    Ok(Parsed {
        resources,
        warnings,
    })
}

/// [`parse_value`] on JSON text.
pub fn parse_json(text: &str) -> Result<Parsed, ResourceError> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| ResourceError::OutOfRange {
            field: "resources",
            value: text.chars().take(200).collect(),
            reason: format!("not valid JSON: {e}"),
        })?;
    parse_value(v)
}

/// Parses a `LinuxResources` JSON object ([`parse_json`]; warnings are only logged).
pub fn from_json(text: &str) -> Result<LinuxResources, ResourceError> {
    parse_json(text).map(|p| p.resources)
}
