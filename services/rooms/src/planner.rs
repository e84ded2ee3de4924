//! Choosing matches from a pool's waiting tickets: a pure function of the tickets, the pool's
//! rules and the time, with no I/O, so it is tested exhaustively without a database.
//!
//! Greedy and fair to the longest-waiting: the oldest unmatched ticket anchors a group; the other
//! tickets that agree with it on every string attribute are tried nearest first (by the first
//! numeric attribute), each admitted when the group still satisfies every numeric rule (see
//! [`crate::pools`]). A group that reaches the match size is a match; otherwise the anchor waits
//! for a later round, when its window is wider, and the next-oldest ticket anchors.

use rally_store::UnixMillis;
use rally_store::matchmaking::{PlannedMatch, Ticket};

use crate::pools::Pool;

/// Groups `candidates` (oldest first) into matches at time `now`.
pub fn plan(pool: &Pool, candidates: &[Ticket], now: UnixMillis) -> Vec<PlannedMatch> {
    let size = pool.match_size as usize;
    let mut used = vec![false; candidates.len()];
    let mut matches = Vec::new();
    for anchor in 0..candidates.len() {
        if used[anchor] {
            continue;
        }
        let a = &candidates[anchor];
        let mut others: Vec<usize> = (anchor + 1..candidates.len())
            .filter(|&i| !used[i] && same_strings(pool, a, &candidates[i]))
            .collect();
        if others.len() + 1 < size {
            continue;
        }
        if let Some(rule) = pool.numeric.first() {
            let key = |i: usize| {
                let value = candidates[i].numeric.get(&rule.attribute).copied();
                let anchor_value = a.numeric.get(&rule.attribute).copied();
                match (value, anchor_value) {
                    (Some(v), Some(w)) => (v - w).abs(),
                    _ => f64::INFINITY,
                }
            };
            // Stable: equally near tickets keep their age order.
            others.sort_by(|&x, &y| key(x).total_cmp(&key(y)));
        }
        let mut group = vec![anchor];
        for candidate in others {
            group.push(candidate);
            if !fits(pool, candidates, &group, now) {
                group.pop();
            }
            if group.len() == size {
                break;
            }
        }
        if group.len() == size {
            group.sort_unstable();
            for &i in &group {
                used[i] = true;
            }
            matches.push(group.iter().map(|&i| candidates[i].id).collect());
        }
    }
    matches
}

fn same_strings(pool: &Pool, a: &Ticket, b: &Ticket) -> bool {
    pool.strings.iter().all(|name| {
        a.strings
            .get(name)
            .is_some_and(|v| b.strings.get(name) == Some(v))
    })
}

/// Whether a group satisfies every numeric rule of the pool at `now`.
pub fn fits(pool: &Pool, tickets: &[Ticket], group: &[usize], now: UnixMillis) -> bool {
    pool.numeric.iter().all(|rule| {
        let mut low = f64::INFINITY;
        let mut high = f64::NEG_INFINITY;
        let mut window = f64::INFINITY;
        for &i in group {
            let ticket = &tickets[i];
            let Some(&value) = ticket.numeric.get(&rule.attribute) else {
                return false;
            };
            low = low.min(value);
            high = high.max(value);
            window = window.min(rule.window(now - ticket.created_at));
        }
        high - low <= window
    })
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};

    use proptest::prelude::*;
    use rally_store::matchmaking::TicketStatus;
    use uuid::Uuid;

    use super::*;
    use crate::pools::NumericRule;

    fn pool(size: u32) -> Pool {
        Pool {
            name: "ranked".into(),
            match_size: size,
            max_wait_secs: 300,
            numeric: vec![NumericRule {
                attribute: "skill".into(),
                initial_window: 100.0,
                widen_per_second: 10.0,
                max_window: 1000.0,
            }],
            strings: vec!["region".into()],
        }
    }

    fn ticket(skill: f64, region: &str, created_at: UnixMillis) -> Ticket {
        Ticket {
            id: Uuid::new_v4(),
            user_id: Uuid::new_v4(),
            pool: "ranked".into(),
            numeric: BTreeMap::from([("skill".into(), skill)]),
            strings: BTreeMap::from([("region".into(), region.into())]),
            status: TicketStatus::Queued,
            created_at,
            expires_at: created_at + 300_000,
            matched: None,
        }
    }

    #[test]
    fn close_skills_in_one_region_match_and_far_ones_wait() {
        let tickets = vec![
            ticket(1000.0, "eu", 0),
            ticket(1050.0, "eu", 1),
            ticket(1500.0, "eu", 2),
            ticket(1010.0, "us", 3),
        ];
        let matches = plan(&pool(2), &tickets, 0);
        assert_eq!(matches, vec![vec![tickets[0].id, tickets[1].id]]);
    }

    #[test]
    fn windows_widen_with_waiting_time() {
        let tickets = vec![ticket(1000.0, "eu", 0), ticket(1300.0, "eu", 0)];
        assert!(
            plan(&pool(2), &tickets, 0).is_empty(),
            "300 apart, window 100"
        );
        assert!(
            plan(&pool(2), &tickets, 19_000).is_empty(),
            "window 290 after 19 s"
        );
        assert_eq!(
            plan(&pool(2), &tickets, 20_000).len(),
            1,
            "window 300 after 20 s"
        );
    }

    #[test]
    fn the_nearest_candidates_join_the_oldest_anchor() {
        let tickets = vec![
            ticket(1000.0, "eu", 0),
            ticket(1090.0, "eu", 1),
            ticket(1010.0, "eu", 2),
            ticket(1020.0, "eu", 3),
        ];
        let matches = plan(&pool(3), &tickets, 0);
        assert_eq!(
            matches,
            vec![vec![tickets[0].id, tickets[2].id, tickets[3].id]]
        );
    }

    proptest! {
        #[test]
        fn every_planned_match_obeys_the_rules_and_no_ticket_is_used_twice(
            specs in proptest::collection::vec((0.0f64..3000.0, 0usize..3, 0i64..60_000), 0..120),
            size in 2u32..6,
            now_offset in 0i64..120_000,
        ) {
            let regions = ["eu", "us", "ap"];
            let mut tickets: Vec<Ticket> = specs
                .iter()
                .map(|&(skill, region, created)| ticket(skill, regions[region], created))
                .collect();
            tickets.sort_by_key(|t| t.created_at);
            let now = 60_000 + now_offset;
            let pool = pool(size);
            let matches = plan(&pool, &tickets, now);
            let mut seen = HashSet::new();
            for group in &matches {
                prop_assert_eq!(group.len(), size as usize);
                let indexes: Vec<usize> = group
                    .iter()
                    .map(|id| tickets.iter().position(|t| t.id == *id).expect("a candidate"))
                    .collect();
                for &i in &indexes {
                    prop_assert!(seen.insert(i), "ticket in two matches");
                    prop_assert_eq!(&tickets[i].strings, &tickets[indexes[0]].strings);
                }
                prop_assert!(fits(&pool, &tickets, &indexes, now));
                prop_assert!(indexes.windows(2).all(|w| w[0] < w[1]), "oldest first");
            }
        }
    }
}
