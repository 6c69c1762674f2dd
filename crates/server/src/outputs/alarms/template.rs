//! The templates of a rule's `labels` and `annotations` (what its
//! Alertmanager alerts carry): text with `{{ $value }}` and
//! `{{ $labels.<name> }}` in it.
//!
//! The supported subset, and nothing more (docs/OPERATIONS.md, "Alertmanager"):
//! - `{{ $value }}`: the alert's value, as in its `value` annotation (`612.5`,
//!   `250`, `NaN` when undefined);
//! - `{{ $labels.<name> }}`: the value of the group label `<name>` of the alarm
//!   instance (one of the rule's `group_by` labels); a label the instance does
//!   not have renders empty;
//! - spaces and tabs inside the braces are optional (`{{$value}}`);
//! - every other character is text, `}}` outside a placeholder included.
//!
//! A `{{` without its `}}`, or anything else between the braces (functions,
//! pipelines, Go's `{{-` trim markers), is refused when the config is loaded
//! ([`Template::parse`]), so a template that loads always renders.

use std::fmt::Write as _;

/// One piece of a template.
#[derive(Clone, Debug, PartialEq)]
enum Part {
    Text(String),
    Value,
    Label(String),
}

/// A parsed template, ready to render.
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// Parses `text`; `Err` says what is wrong and where (the caller names
    /// the config key).
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        let mut offset = 0;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let inner_start = open + 2;
            let Some(len) = rest[inner_start..].find("}}") else {
                return Err(format!(
                    "malformed template: the {{{{ at character {} is not closed by }}}}",
                    text[..offset + open].chars().count() + 1
                ));
            };
            let inner = &rest[inner_start..inner_start + len];
            parts.push(placeholder(inner)?);
            let consumed = inner_start + len + 2;
            rest = &rest[consumed..];
            offset += consumed;
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Template { parts })
    }

    /// The text with `value` and the instance's `labels` (`(name, value)`)
    /// in place of its placeholders.
    pub fn render(&self, value: f64, labels: &[(String, String)]) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Value => {
                    let _ = write!(out, "{value}");
                }
                Part::Label(name) => {
                    if let Some((_, v)) = labels.iter().find(|(n, _)| n == name) {
                        out.push_str(v);
                    }
                }
            }
        }
        out
    }

    /// Whether it uses `{{ $value }}`.
    pub fn uses_value(&self) -> bool {
        self.parts.contains(&Part::Value)
    }
}

/// What stands between `{{` and `}}`.
fn placeholder(inner: &str) -> Result<Part, String> {
    let expr = inner.trim_matches([' ', '\t']);
    if expr == "$value" {
        return Ok(Part::Value);
    }
    if let Some(name) = expr.strip_prefix("$labels.")
        && is_label_name(name)
    {
        return Ok(Part::Label(name.to_owned()));
    }
    Err(format!(
        "malformed template: {{{{{inner}}}}} is not {{{{ $value }}}} or {{{{ $labels.<name> }}}} (the only placeholders supported)"
    ))
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`: a label name, as strata and Alertmanager take them.
pub fn is_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(text: &str, value: f64) -> String {
        let labels = [("cloud".to_owned(), "aws".to_owned())];
        match Template::parse(text) {
            Ok(t) => t.render(value, &labels),
            Err(e) => panic!("{text:?}: {e}"),
        }
    }

    #[test]
    fn placeholders_render_the_value_and_the_group_labels() {
        assert_eq!(
            render("p99 {{ $value }} ms in {{$labels.cloud}}", 612.5),
            "p99 612.5 ms in aws"
        );
        assert_eq!(render("{{\t$value }}", 250.0), "250");
        assert_eq!(render("{{ $value }}", f64::NAN), "NaN");
        assert_eq!(
            render("no placeholder }} here", 1.0),
            "no placeholder }} here"
        );
        assert_eq!(render("", 1.0), "");
        // A label the instance does not have renders empty.
        assert_eq!(render("[{{ $labels.region }}]", 1.0), "[]");
        assert_eq!(render("é{{ $value }}ü", 1.0), "é1ü");
        assert!(Template::parse("{{ $value }}").is_ok_and(|t| t.uses_value()));
        assert!(Template::parse("{{ $labels.a }}").is_ok_and(|t| !t.uses_value()));
    }

    #[test]
    fn malformed_templates_are_refused_saying_why() {
        for (text, says) in [
            ("p99 {{ $value", "the {{ at character 5 is not closed by }}"),
            ("é{{", "the {{ at character 2 is not closed by }}"),
            ("{{ $values }}", "{{ $values }} is not {{ $value }}"),
            ("{{ .Value }}", "{{ .Value }} is not"),
            ("{{ $labels }}", "{{ $labels }} is not"),
            ("{{ $labels.1x }}", "{{ $labels.1x }} is not"),
            ("{{ $labels.a-b }}", "is not"),
            ("{{- $value }}", "is not"),
            ("{{ $value | humanize }}", "is not"),
            ("{{}}", "{{}} is not"),
        ] {
            match Template::parse(text) {
                Ok(t) => panic!("{text:?} parsed: {t:?}"),
                Err(e) => {
                    assert!(e.starts_with("malformed template: "), "{e}");
                    assert!(e.contains(says), "{text:?}: {e}");
                }
            }
        }
    }

    #[test]
    fn label_names_are_checked() {
        for ok in ["a", "_x", "cloud_region", "A9"] {
            assert!(is_label_name(ok), "{ok}");
        }
        for bad in ["", "9a", "a-b", "a.b", "é"] {
            assert!(!is_label_name(bad), "{bad}");
        }
    }
}
