//! Job templates: a job spec kept on the server under a name, with `{{ params.NAME }}`
//! placeholders in any of its strings (command, argv, env values, image, volumes, name,
//! metadata …). Every placeholder is a parameter; its type and default may be declared.
//! Submitting a template fills the parameters in and adds `DROVER_PARAM_<NAME>` to the
//! job's env, then the result is validated like any submit.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::spec::{FieldError, SubmitRequest};

/// Longest template name, in bytes.
pub const MAX_TEMPLATE_NAME: usize = 100;

/// What a parameter's value must be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ParamType {
    #[default]
    String,
    Integer,
    Number,
    Boolean,
}

impl ParamType {
    /// Every type, for messages and parsing.
    pub const ALL: [ParamType; 4] = [
        ParamType::String,
        ParamType::Integer,
        ParamType::Number,
        ParamType::Boolean,
    ];

    /// A value of this type, to try a template's job with.
    fn sample(self) -> Value {
        match self {
            ParamType::String => "x".into(),
            ParamType::Integer => 1.into(),
            ParamType::Number => 1.5.into(),
            ParamType::Boolean => true.into(),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ParamType::String => "string",
            ParamType::Integer => "integer",
            ParamType::Number => "number",
            ParamType::Boolean => "boolean",
        }
    }

    /// The value as it goes into a string, or why it is not of this type. Strings are
    /// parsed (`--param n=3` gives the string "3").
    fn text_of(self, v: &Value) -> Result<String, String> {
        let text = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => return Err(format!("must be a {}, not {v}", self.as_str())),
        };
        let ok = match self {
            ParamType::String => true,
            ParamType::Integer => text.parse::<i64>().is_ok(),
            ParamType::Number => text.parse::<f64>().is_ok_and(f64::is_finite),
            ParamType::Boolean => text == "true" || text == "false",
        };
        match ok {
            true => Ok(text),
            false => Err(format!("must be a {}, not {text:?}", self.as_str())),
        }
    }
}

impl std::str::FromStr for ParamType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ParamType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("type {s:?} is not one of string, integer, number, boolean"))
    }
}

/// A parameter's declaration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ParamSpec {
    #[serde(default, rename = "type")]
    pub kind: ParamType,
    /// Used when a submit leaves the parameter out; without one it is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
}

/// `POST /v1/templates`: creates the template, or its next version.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateCreate {
    /// Letters, digits, `-`, `_` and `.`; at most 100 bytes.
    pub name: String,
    /// The job, with `{{ params.NAME }}` in any string.
    pub job: SubmitRequest,
    /// Types and defaults of parameters; a placeholder not listed is a required string.
    #[serde(default)]
    pub params: BTreeMap<String, ParamSpec>,
}

/// One version of a template.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Template {
    pub name: String,
    /// 1 for the first, one more for each `create` of the same name.
    pub version: u32,
    pub job: SubmitRequest,
    /// Every parameter, declared or found in the job.
    pub params: BTreeMap<String, ParamSpec>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// `GET /v1/templates`: the latest version of each.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TemplateList {
    pub templates: Vec<Template>,
}

/// `POST /v1/templates/{name}/jobs`: a job from the template.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateSubmit {
    /// Parameter values: strings, or JSON numbers and booleans.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub params: BTreeMap<String, Value>,
    /// Which version (default: the latest).
    #[serde(default)]
    pub version: Option<u32>,
    /// Instead of the template's name (after filling in).
    #[serde(default)]
    pub name: Option<String>,
    /// Instead of the template's metadata.
    #[serde(default)]
    pub metadata: Option<Value>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// The job's secrets (a template keeps none).
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// Jobs this one waits for (a template keeps none).
    #[serde(default)]
    pub after: Vec<crate::group::Dependency>,
}

/// Whether `name` may name a template (or a schedule): 1 to `MAX_TEMPLATE_NAME`
/// letters, digits, '-', '_' and '.', safe in a URL path.
pub fn is_template_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TEMPLATE_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// The template a job came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TemplateRef {
    pub name: String,
    pub version: u32,
}

/// The parameter names of the `{{ params.NAME }}` placeholders in `s`, with where each
/// starts and ends. Other `{{ … }}` (a Go template in a `docker inspect -f`) are text.
fn placeholders(s: &str) -> Vec<(usize, usize, &str)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(open) = s[from..].find("{{").map(|i| from + i) {
        let Some(close) = s[open + 2..].find("}}").map(|i| open + 2 + i) else {
            break;
        };
        let inner = s[open + 2..close].trim();
        match inner.strip_prefix("params.") {
            Some(name) if crate::spec::is_var_name(name) => {
                out.push((open, close + 2, name));
                from = close + 2;
            }
            _ => from = open + 2,
        }
    }
    out
}

/// Every string in `v`, keys of objects included (env names may be parameters too).
fn strings<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::String(s) => out.push(s),
        Value::Array(items) => items.iter().for_each(|i| strings(i, out)),
        Value::Object(map) => {
            for (k, v) in map {
                out.push(k);
                strings(v, out);
            }
        }
        _ => {}
    }
}

fn fill(v: &Value, values: &BTreeMap<String, String>) -> Value {
    let sub = |s: &str| {
        let mut out = String::with_capacity(s.len());
        let mut last = 0;
        for (start, end, name) in placeholders(s) {
            out.push_str(&s[last..start]);
            out.push_str(&values[name]);
            last = end;
        }
        out.push_str(&s[last..]);
        out
    };
    match v {
        Value::String(s) => Value::String(sub(s)),
        Value::Array(items) => Value::Array(items.iter().map(|i| fill(i, values)).collect()),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (sub(k), fill(v, values))).collect())
        }
        other => other.clone(),
    }
}

impl TemplateCreate {
    /// The template's name and every parameter (declared, or found in the job), or
    /// everything that is wrong at once: a bad name, a declared parameter the job never
    /// uses, a default of the wrong type, secrets or an idempotency key (they belong to
    /// each submit), and a job that is invalid once filled in with each default or a
    /// sample value of its type.
    pub fn check(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<BTreeMap<String, ParamSpec>, Vec<FieldError>> {
        let mut errs = Vec::new();
        if !is_template_name(&self.name) {
            errs.push(FieldError::new(
                "name",
                format!("must be 1 to {MAX_TEMPLATE_NAME} letters, digits, '-', '_' or '.'"),
            ));
        }
        let job = serde_json::to_value(&self.job).expect("a submit request serializes");
        let mut texts = Vec::new();
        strings(&job, &mut texts);
        let used: BTreeSet<&str> = texts
            .iter()
            .flat_map(|s| placeholders(s).into_iter().map(|(_, _, n)| n))
            .collect();
        let mut params = BTreeMap::new();
        for name in &used {
            params.insert(name.to_string(), ParamSpec::default());
        }
        for (name, spec) in &self.params {
            let field = format!("params.{name}");
            if !used.contains(name.as_str()) {
                errs.push(FieldError::new(
                    field.clone(),
                    format!("is declared but the job has no {{{{ params.{name} }}}}"),
                ));
            }
            if let Some(Err(e)) = spec.default.as_ref().map(|d| spec.kind.text_of(d)) {
                errs.push(FieldError::new(format!("{field}.default"), e));
            }
            params.insert(name.clone(), spec.clone());
        }
        if !self.job.secrets.is_empty() {
            errs.push(FieldError::new(
                "job.secrets",
                "a template cannot keep secrets: give them with each submit (`secrets`)",
            ));
        }
        if self.job.idempotency_key.is_some() {
            errs.push(FieldError::new(
                "job.idempotency_key",
                "would make every submit of the template the same job: give a key with each submit",
            ));
        }
        if !self.job.after.is_empty() {
            errs.push(FieldError::new(
                "job.after",
                "a template cannot name the jobs its jobs wait for: give them with each submit (`after`)",
            ));
        }
        // With a parameter's own problems listed above, a trial would only repeat them.
        if !errs.iter().any(|e| e.field.starts_with("params.")) {
            let sample: BTreeMap<String, Value> = params
                .iter()
                .map(|(name, spec)| {
                    let v = spec.default.clone().unwrap_or_else(|| spec.kind.sample());
                    (name.clone(), v)
                })
                .collect();
            let trial = Template {
                name: self.name.clone(),
                version: 0,
                job: self.job.clone(),
                params: params.clone(),
                created_at: now,
            };
            if let Err(found) = trial.render(&sample).and_then(|job| job.validate(now)) {
                errs.extend(found.into_iter().map(|e| e.within("job.")));
            }
        }
        match errs.is_empty() {
            true => Ok(params),
            false => Err(errs),
        }
    }
}

impl Template {
    /// A job made from this template: filled in with `params`, changed by `edit` (what
    /// each submit adds: its name, secrets, key …), validated like any submit, and
    /// marked as made from this version.
    pub fn job(
        &self,
        params: &BTreeMap<String, Value>,
        now: chrono::DateTime<chrono::Utc>,
        edit: impl FnOnce(&mut SubmitRequest),
    ) -> Result<crate::ValidJob, Vec<FieldError>> {
        let mut req = self.render(params)?;
        edit(&mut req);
        let mut valid = req.validate(now)?;
        valid.template = Some(TemplateRef {
            name: self.name.clone(),
            version: self.version,
        });
        Ok(valid)
    }

    /// The job this template makes with `given` parameters: every placeholder filled,
    /// `DROVER_PARAM_<NAME>` in its env. Every missing, unknown or ill-typed parameter
    /// is reported, each on its own.
    pub fn render(
        &self,
        given: &BTreeMap<String, Value>,
    ) -> Result<SubmitRequest, Vec<FieldError>> {
        let mut errs = Vec::new();
        let mut values = BTreeMap::new();
        for name in given.keys().filter(|n| !self.params.contains_key(*n)) {
            let known: Vec<&str> = self.params.keys().map(String::as_str).collect();
            errs.push(FieldError::new(
                format!("params.{name}"),
                format!(
                    "is not a parameter of template {} (it has: {})",
                    self.name,
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        }
        for (name, spec) in &self.params {
            let field = format!("params.{name}");
            match given.get(name).or(spec.default.as_ref()) {
                None => errs.push(FieldError::new(field, "is required")),
                Some(v) => match spec.kind.text_of(v) {
                    Ok(text) => {
                        values.insert(name.clone(), text);
                    }
                    Err(e) => errs.push(FieldError::new(field, e)),
                },
            }
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        let job = serde_json::to_value(&self.job).expect("a submit request serializes");
        let mut job: SubmitRequest = serde_json::from_value(fill(&job, &values))
            .map_err(|e| vec![FieldError::new("job", format!("after filling in: {e}"))])?;
        for (name, value) in values {
            job.env
                .insert(format!("DROVER_PARAM_{}", name.to_ascii_uppercase()), value);
        }
        Ok(job)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn template(job: Value, params: Value) -> Result<Template, Vec<FieldError>> {
        let create: TemplateCreate =
            serde_json::from_value(json!({"name": "t", "job": job, "params": params})).unwrap();
        let params = create.check(chrono::Utc::now())?;
        Ok(Template {
            name: create.name,
            version: 1,
            job: create.job,
            params,
            created_at: chrono::Utc::now(),
        })
    }

    #[test]
    fn placeholders_are_found_filled_and_exported() {
        let t = template(
            json!({"exec": {"kind": "process", "argv": ["run", "--config", "{{ params.config_path }}", "{{params.n}}x"]},
                   "name": "job {{ params.job_id }}", "env": {"MODE": "{{ params.mode }}"}}),
            json!({"n": {"type": "integer"}, "mode": {"default": "fast"}}),
        )
        .unwrap();
        assert_eq!(
            t.params.keys().collect::<Vec<_>>(),
            ["config_path", "job_id", "mode", "n"]
        );
        let given = BTreeMap::from([
            ("job_id".to_string(), json!("J-42")),
            ("config_path".to_string(), json!("/data/c.yaml")),
            ("n".to_string(), json!("3")),
        ]);
        let job = t.render(&given).unwrap();
        let v = serde_json::to_value(&job).unwrap();
        assert_eq!(
            v["exec"]["argv"],
            json!(["run", "--config", "/data/c.yaml", "3x"])
        );
        assert_eq!(job.name.as_deref(), Some("job J-42"));
        assert_eq!(job.env["MODE"], "fast");
        assert_eq!(job.env["DROVER_PARAM_JOB_ID"], "J-42");
        assert_eq!(job.env["DROVER_PARAM_N"], "3");
    }

    #[test]
    fn every_missing_unknown_and_ill_typed_parameter_is_listed() {
        let t = template(
            json!({"exec": {"kind": "shell", "command": "echo {{ params.a }} {{ params.n }} {{ params.b }}"}}),
            json!({"n": {"type": "integer"}}),
        )
        .unwrap();
        let given = BTreeMap::from([
            ("n".to_string(), json!("many")),
            ("zzz".to_string(), json!("1")),
        ]);
        let errs = t.render(&given).unwrap_err();
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["params.zzz", "params.a", "params.b", "params.n"]);
        assert!(errs[3].message.contains("integer"), "{errs:?}");
    }

    #[test]
    fn other_braces_are_text_and_bad_declarations_are_refused() {
        let t = template(
            json!({"exec": {"kind": "shell", "command": "docker inspect -f '{{.Id}}' x"}}),
            json!({}),
        )
        .unwrap();
        assert!(t.params.is_empty());
        let errs = template(
            json!({"exec": {"kind": "shell", "command": "echo {{ params.a }}"}}),
            json!({"b": {}, "a": {"type": "boolean", "default": "yes"}}),
        )
        .unwrap_err();
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["params.a.default", "params.b"]);
    }
}
