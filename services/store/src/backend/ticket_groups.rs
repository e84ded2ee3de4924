//! Which of a planner's groups a round forms: the plan checked against the candidates. Pure: no
//! database.

use std::collections::{HashMap, HashSet};

use crate::matchmaking::{PlannedMatch, Ticket};
use uuid::Uuid;

/// The groups of `planned` that a round forms, each as indexes into `candidates` in candidate
/// order (oldest ticket first, whose user owns the room), whatever the order the plan gave.
///
/// A group is skipped when it is empty, has more tickets than `capacity`, names a ticket that is
/// not a candidate, or names a user twice or one an earlier formed group took. (Each ticket has
/// one user, so that also covers a ticket named twice or already taken.)
pub fn formed_groups(
    candidates: &[Ticket],
    planned: &[PlannedMatch],
    capacity: u32,
) -> Vec<Vec<usize>> {
    let capacity = usize::try_from(capacity).unwrap_or(usize::MAX);
    let position: HashMap<Uuid, usize> = candidates
        .iter()
        .enumerate()
        .map(|(index, ticket)| (ticket.id, index))
        .collect();
    let mut taken = HashSet::new();
    let mut formed = Vec::new();
    'groups: for group in planned {
        if group.is_empty() || group.len() > capacity {
            continue;
        }
        let mut indexes = Vec::with_capacity(group.len());
        let mut users = HashSet::with_capacity(group.len());
        for id in group {
            let Some(&index) = position.get(id) else {
                continue 'groups;
            };
            let user = candidates[index].user_id;
            if taken.contains(&user) || !users.insert(user) {
                continue 'groups;
            }
            indexes.push(index);
        }
        indexes.sort_unstable();
        taken.extend(users);
        formed.push(indexes);
    }
    formed
}

#[cfg(test)]
mod tests {
    use crate::matchmaking::TicketStatus;

    use super::*;

    fn candidates(count: usize) -> Vec<Ticket> {
        (0..count)
            .map(|age| Ticket {
                id: Uuid::new_v4(),
                user_id: Uuid::new_v4(),
                pool: "duel".to_owned(),
                numeric: Default::default(),
                strings: Default::default(),
                status: TicketStatus::Queued,
                created_at: i64::try_from(age).expect("small"),
                expires_at: 1_000,
                matched: None,
            })
            .collect()
    }

    fn ids(tickets: &[Ticket], indexes: &[usize]) -> PlannedMatch {
        indexes.iter().map(|&index| tickets[index].id).collect()
    }

    #[test]
    fn groups_are_formed_oldest_ticket_first_whatever_the_plans_order() {
        let tickets = candidates(4);
        let planned = vec![ids(&tickets, &[3, 1]), ids(&tickets, &[2, 0])];
        assert_eq!(
            formed_groups(&tickets, &planned, 2),
            vec![vec![1, 3], vec![0, 2]]
        );
    }

    #[test]
    fn groups_naming_unknown_repeated_or_taken_tickets_are_skipped() {
        let tickets = candidates(6);
        let mut unknown = ids(&tickets, &[0]);
        unknown.push(Uuid::new_v4());
        let planned = vec![
            unknown,
            ids(&tickets, &[1, 1]),
            ids(&tickets, &[2, 3]),
            ids(&tickets, &[3, 4]),
            ids(&tickets, &[0, 5]),
        ];
        assert_eq!(
            formed_groups(&tickets, &planned, 2),
            vec![vec![2, 3], vec![0, 5]],
            "the unknown id, the repeated ticket and the ticket already taken skip their groups"
        );
    }

    #[test]
    fn a_users_second_ticket_counts_as_taken() {
        let mut tickets = candidates(3);
        tickets[2].user_id = tickets[0].user_id;
        let planned = vec![ids(&tickets, &[0, 1]), ids(&tickets, &[2])];
        assert_eq!(formed_groups(&tickets, &planned, 2), vec![vec![0, 1]]);
    }

    #[test]
    fn empty_and_oversized_groups_are_skipped() {
        let tickets = candidates(3);
        let planned = vec![Vec::new(), ids(&tickets, &[0, 1, 2]), ids(&tickets, &[2])];
        assert_eq!(formed_groups(&tickets, &planned, 2), vec![vec![2]]);
    }
}
