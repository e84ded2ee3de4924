//! Matchmaking pools as configured in `rallyd`: match size, waiting limit, attribute rules.
//!
//! Read from JSON (`rallyd --matchmaking-pools FILE`):
//!
//! ```json
//! [{ "name": "ranked", "match_size": 4, "max_wait_secs": 300,
//!    "numeric": [{ "attribute": "skill", "initial_window": 100, "widen_per_second": 20, "max_window": 1000 }],
//!    "strings": ["region", "mode"] }]
//! ```
//!
//! Every attribute a rule names is required on Enqueue. A numeric rule admits a group when the
//! spread of the attribute (largest minus smallest) is within the narrowest window of the group's
//! tickets, a ticket's window being `initial_window + widen_per_second × seconds waited`, capped at
//! `max_window`. String attributes must be equal across a group.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::RoomsError;

/// A numeric attribute rule.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumericRule {
    /// The attribute's name (e.g. `skill`).
    pub attribute: String,
    /// The window when a ticket is new.
    pub initial_window: f64,
    /// How much the window grows per second waited.
    #[serde(default)]
    pub widen_per_second: f64,
    /// The widest the window gets.
    pub max_window: f64,
}

impl NumericRule {
    /// The window of a ticket that has waited `waited_ms`.
    pub fn window(&self, waited_ms: i64) -> f64 {
        let waited = (waited_ms.max(0) as f64) / 1000.0;
        (self.initial_window + self.widen_per_second * waited).min(self.max_window)
    }
}

/// One pool.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    /// Its name, as clients give it.
    pub name: String,
    /// Users per match (and capacity of the match's room).
    pub match_size: u32,
    /// How long a ticket may wait before it expires.
    #[serde(default = "default_max_wait")]
    pub max_wait_secs: u64,
    /// Numeric attribute rules.
    #[serde(default)]
    pub numeric: Vec<NumericRule>,
    /// String attributes that must be equal across a match.
    #[serde(default)]
    pub strings: Vec<String>,
}

fn default_max_wait() -> u64 {
    300
}

/// The configured pools, by name.
#[derive(Debug, Clone, PartialEq)]
pub struct Pools {
    pools: BTreeMap<String, Pool>,
}

impl Default for Pools {
    /// One pool, `default`, matching any two players, tickets waiting up to five minutes.
    fn default() -> Self {
        Self::new(vec![Pool {
            name: "default".into(),
            match_size: 2,
            max_wait_secs: 300,
            numeric: Vec::new(),
            strings: Vec::new(),
        }])
        .unwrap_or(Self {
            pools: BTreeMap::new(),
        })
    }
}

/// Why a pool configuration was refused.
#[derive(Debug, thiserror::Error)]
#[error("matchmaking pools: {0}")]
pub struct PoolConfigError(String);

impl Pools {
    /// Checks and indexes pools.
    pub fn new(pools: Vec<Pool>) -> Result<Self, PoolConfigError> {
        let mut by_name = BTreeMap::new();
        for pool in pools {
            let bad = |what: &str| PoolConfigError(format!("pool {:?}: {what}", pool.name));
            if pool.name.is_empty() || pool.name.len() > 64 {
                return Err(bad("name must be 1 to 64 bytes"));
            }
            if !(2..=256).contains(&pool.match_size) {
                return Err(bad("match_size must be 2 to 256"));
            }
            if pool.max_wait_secs == 0 {
                return Err(bad("max_wait_secs must be at least 1"));
            }
            for rule in &pool.numeric {
                let finite = [rule.initial_window, rule.widen_per_second, rule.max_window]
                    .iter()
                    .all(|v| v.is_finite() && *v >= 0.0);
                if !finite || rule.max_window < rule.initial_window || rule.attribute.is_empty() {
                    return Err(bad(&format!(
                        "numeric rule {:?} needs finite, non-negative windows with max_window >= initial_window",
                        rule.attribute
                    )));
                }
            }
            if pool.strings.iter().any(String::is_empty) {
                return Err(bad("string attribute names must not be empty"));
            }
            if by_name.insert(pool.name.clone(), pool.clone()).is_some() {
                return Err(bad("defined twice"));
            }
        }
        if by_name.is_empty() {
            return Err(PoolConfigError("no pool is defined".into()));
        }
        Ok(Self { pools: by_name })
    }

    /// Parses pools from JSON (an array of pools).
    pub fn from_json(text: &str) -> Result<Self, PoolConfigError> {
        let pools: Vec<Pool> =
            serde_json::from_str(text).map_err(|e| PoolConfigError(e.to_string()))?;
        Self::new(pools)
    }

    /// The pool named `name`.
    pub fn get(&self, name: &str) -> Option<&Pool> {
        self.pools.get(name)
    }

    /// Every pool.
    pub fn iter(&self) -> impl Iterator<Item = &Pool> {
        self.pools.values()
    }
}

impl Pool {
    /// Checks that a ticket's attributes carry everything this pool's rules need.
    pub fn check_attributes(
        &self,
        numeric: &BTreeMap<String, f64>,
        strings: &BTreeMap<String, String>,
    ) -> Result<(), RoomsError> {
        for rule in &self.numeric {
            if !numeric.contains_key(&rule.attribute) {
                return Err(RoomsError::invalid(
                    "numeric_attributes",
                    format!("pool {:?} requires {:?}", self.name, rule.attribute),
                ));
            }
        }
        for name in &self.strings {
            if !strings.contains_key(name) {
                return Err(RoomsError::invalid(
                    "string_attributes",
                    format!("pool {:?} requires {name:?}", self.name),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_parse_from_json_with_defaults() {
        let pools = Pools::from_json(
            r#"[{"name":"ranked","match_size":4,
                 "numeric":[{"attribute":"skill","initial_window":100,"widen_per_second":20,"max_window":1000}],
                 "strings":["region"]}]"#,
        )
        .expect("valid");
        let ranked = pools.get("ranked").expect("pool");
        assert_eq!(ranked.max_wait_secs, 300);
        assert_eq!(ranked.numeric[0].window(0), 100.0);
        assert_eq!(ranked.numeric[0].window(10_000), 300.0);
        assert_eq!(ranked.numeric[0].window(1_000_000), 1000.0);
    }

    #[test]
    fn bad_pools_are_refused_with_the_reason() {
        for (json, says) in [
            (r#"[{"name":"a","match_size":1}]"#, "match_size"),
            (r#"[{"name":"","match_size":2}]"#, "name"),
            (
                r#"[{"name":"a","match_size":2},{"name":"a","match_size":3}]"#,
                "twice",
            ),
            (r#"[]"#, "no pool"),
            (
                r#"[{"name":"a","match_size":2,"numeric":[{"attribute":"s","initial_window":10,"max_window":5}]}]"#,
                "max_window",
            ),
            (r#"[{"name":"a","match_size":2,"typo":1}]"#, "unknown field"),
        ] {
            let err = Pools::from_json(json).expect_err(json).to_string();
            assert!(err.contains(says), "{json}: {err}");
        }
    }
}
