//! Label selectors, with the API's validation: an operator or value list the API server
//! would reject is an error, never a silent match or non-match.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::state::Labels;

/// A validated selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Selector {
    /// `{}` selects everything.
    pub fn everything() -> Self {
        Selector {
            requirements: Vec::new(),
        }
    }

    pub fn parse(sel: &LabelSelector) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for (k, v) in sel.match_labels.iter().flatten() {
            requirements.push(Requirement::Equals(k.clone(), v.clone()));
        }
        for e in sel.match_expressions.iter().flatten() {
            let values = e.values.clone().unwrap_or_default();
            let key = e.key.clone();
            let req = match e.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(format!(
                        "matchExpressions on {key:?}: operator {} needs at least one value",
                        e.operator
                    ));
                }
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(format!(
                        "matchExpressions on {key:?}: operator {} takes no values",
                        e.operator
                    ));
                }
                "In" => Requirement::In(key, values),
                "NotIn" => Requirement::NotIn(key, values),
                "Exists" => Requirement::Exists(key),
                "DoesNotExist" => Requirement::DoesNotExist(key),
                other => {
                    return Err(format!(
                        "matchExpressions on {key:?}: unknown operator {other:?} (expected In, NotIn, Exists or DoesNotExist)"
                    ));
                }
            };
            requirements.push(req);
        }
        Ok(Selector { requirements })
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            // As in the API: a missing key satisfies NotIn.
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelector {
        LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: key.into(),
                operator: op.into(),
                values: (!values.is_empty())
                    .then(|| values.iter().map(|v| v.to_string()).collect()),
            }]),
        }
    }

    #[test]
    fn empty_selector_matches_everything() {
        let s = Selector::parse(&LabelSelector::default()).unwrap();
        assert!(s.matches(&labels(&[])));
        assert!(s.matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn operators() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        assert!(
            Selector::parse(&expr("app", "In", &["web", "db"]))
                .unwrap()
                .matches(&l)
        );
        assert!(
            !Selector::parse(&expr("app", "In", &["db"]))
                .unwrap()
                .matches(&l)
        );
        assert!(
            Selector::parse(&expr("app", "NotIn", &["db"]))
                .unwrap()
                .matches(&l)
        );
        assert!(
            Selector::parse(&expr("missing", "NotIn", &["x"]))
                .unwrap()
                .matches(&l)
        );
        assert!(
            !Selector::parse(&expr("app", "NotIn", &["web"]))
                .unwrap()
                .matches(&l)
        );
        assert!(
            Selector::parse(&expr("tier", "Exists", &[]))
                .unwrap()
                .matches(&l)
        );
        assert!(
            !Selector::parse(&expr("tier", "DoesNotExist", &[]))
                .unwrap()
                .matches(&l)
        );
    }

    #[test]
    fn invalid_selectors_are_errors() {
        assert!(Selector::parse(&expr("app", "In", &[])).is_err());
        assert!(Selector::parse(&expr("app", "Exists", &["x"])).is_err());
        assert!(Selector::parse(&expr("app", "Equals", &["x"])).is_err());
    }
}
