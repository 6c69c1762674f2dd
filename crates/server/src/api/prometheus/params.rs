//! Request parameters as Prometheus' API takes them: from the URL and, for
//! POST, a form-encoded body; times as RFC 3339 or Unix seconds with a
//! fraction; durations as `5m`-style strings or float seconds.

use axum::http::{HeaderMap, header};

use super::value::EvalError;

/// The parameters of one request, in order, repeated keys kept.
pub struct Params {
    pairs: Vec<(String, String)>,
}

fn bad(message: String) -> EvalError {
    EvalError::BadData(message)
}

impl Params {
    /// The URL's query string and, when the body is form-encoded, the body's.
    pub fn new(query: Option<&str>, headers: &HeaderMap, body: &[u8]) -> Result<Params, EvalError> {
        let mut pairs: Vec<(String, String)> = match query {
            Some(q) => serde_urlencoded::from_str(q)
                .map_err(|e| bad(format!("cannot read the query string: {e}")))?,
            None => Vec::new(),
        };
        let form = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if form && !body.is_empty() {
            let from_body: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
                .map_err(|e| bad(format!("cannot read the form body: {e}")))?;
            pairs.extend(from_body);
        }
        Ok(Params { pairs })
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name`, in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn required(&self, name: &str) -> Result<&str, EvalError> {
        self.get(name)
            .ok_or_else(|| bad(format!("missing parameter {name}")))
    }

    /// A boolean parameter (`true`/`1`, `false`/`0`); absent is false.
    pub fn flag(&self, name: &str) -> Result<bool, EvalError> {
        match self.get(name) {
            None | Some("false" | "0" | "") => Ok(false),
            Some("true" | "1") => Ok(true),
            Some(other) => Err(bad(format!("{name}={other:?}: use true or false"))),
        }
    }

    /// `limit`: a count, 0 or absent for none.
    pub fn limit(&self) -> Result<usize, EvalError> {
        match self.get("limit") {
            None | Some("") => Ok(0),
            Some(s) => s
                .parse()
                .map_err(|_| bad(format!("limit={s:?}: use a whole number, 0 for none"))),
        }
    }

    /// Checks `start` and `end` where given (the series, labels and label
    /// values answers cover what the node knows, whatever these say).
    pub fn check_times(&self) -> Result<(), EvalError> {
        for name in ["start", "end"] {
            if let Some(s) = self.get(name) {
                parse_time(name, s)?;
            }
        }
        Ok(())
    }
}

/// A time parameter in ms: Unix seconds (with a fraction) or RFC 3339.
pub fn parse_time(name: &str, s: &str) -> Result<i64, EvalError> {
    let ms = if let Ok(secs) = s.parse::<f64>() {
        let ms = (secs * 1000.0).round();
        (ms.is_finite() && ms.abs() < 9.0e15).then_some(ms as i64)
    } else {
        chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.timestamp_millis())
    };
    ms.filter(|ms| strata_model::time::in_range(*ms)).ok_or_else(|| {
        bad(format!(
            "invalid parameter {name:?}: cannot parse {s:?} to a valid timestamp (Unix seconds or RFC 3339, years 1 to 9999)"
        ))
    })
}

/// A positive step in ms: float seconds or a duration such as `30s`, `1m`.
pub fn parse_step(s: &str) -> Result<i64, EvalError> {
    let invalid = || {
        bad(format!(
            "invalid parameter \"step\": cannot parse {s:?} to a valid duration"
        ))
    };
    let ms = if let Ok(secs) = s.parse::<f64>() {
        let ms = (secs * 1000.0).round();
        if !(ms.is_finite() && ms.abs() < 9.0e15) {
            return Err(invalid());
        }
        ms as i64
    } else {
        let d = promql_parser::util::parse_duration(s).map_err(|_| invalid())?;
        i64::try_from(d.as_millis()).map_err(|_| invalid())?
    };
    if ms <= 0 {
        return Err(bad(
            "zero or negative query resolution step widths are not accepted. Try a positive integer".into(),
        ));
    }
    Ok(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_seconds_and_rfc3339() {
        assert_eq!(parse_time("t", "1700000000"), Ok(1_700_000_000_000));
        assert_eq!(parse_time("t", "1700000000.25"), Ok(1_700_000_000_250));
        assert_eq!(
            parse_time("t", "2023-11-14T22:13:20Z"),
            Ok(1_700_000_000_000)
        );
        assert_eq!(
            parse_time("t", "2023-11-14T23:13:20.5+01:00"),
            Ok(1_700_000_000_500)
        );
        for bad in ["", "yesterday", "1e300", "NaN", "inf", "99999999999999"] {
            assert!(parse_time("time", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn steps_as_durations_or_seconds() {
        assert_eq!(parse_step("15"), Ok(15_000));
        assert_eq!(parse_step("0.5"), Ok(500));
        assert_eq!(parse_step("1m"), Ok(60_000));
        assert_eq!(parse_step("1h30m"), Ok(5_400_000));
        for bad in ["0", "-5", "abc", "1e300", "NaN"] {
            assert!(parse_step(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn url_and_form_parameters_merge_and_repeat() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            "application/x-www-form-urlencoded".parse().unwrap(),
        );
        let p = Params::new(
            Some("match[]=a&limit=2"),
            &headers,
            b"match%5B%5D=b%7Bx%3D%22y%22%7D&query=1%2B1",
        )
        .unwrap();
        assert_eq!(p.all("match[]"), vec!["a", "b{x=\"y\"}"]);
        assert_eq!(p.get("query"), Some("1+1"));
        assert_eq!(p.limit(), Ok(2));
        assert!(p.required("time").is_err());
        assert!(Params::new(Some("a=%zz"), &HeaderMap::new(), b"").is_ok());
    }
}
