//! Which worker should own which partition: rendezvous (highest random
//! weight) hashing of partition × worker, bounded by a fair share of
//! ceil(N / live workers) each (and by a worker's own `--max-partitions`).
//!
//! Every worker computes the same answer from the same member list, with
//! no coordination: the lease bucket settles who actually holds what.
//! Pairs are taken in order of their weight, highest first, while the
//! worker has room: a partition goes to the worker that weighs it most
//! among those with room, so adding or removing a worker moves few
//! partitions besides those it takes or leaves (about 1/(m+1) of them).

use std::collections::BTreeMap;

use crate::membership::Member;
use crate::partition::fnv1a32;

/// ceil(`partitions` / `workers`): the most partitions a worker owns when
/// `workers` share them (`partitions` for no workers).
#[must_use]
pub fn fair_share(partitions: u32, workers: usize) -> u32 {
    if workers == 0 {
        return partitions;
    }
    partitions.div_ceil(u32::try_from(workers).unwrap_or(u32::MAX))
}

/// The weight of `partition` for worker `id`.
#[must_use]
pub fn weight(id: &str, partition: u32) -> u64 {
    let worker = u64::from(fnv1a32(id.as_bytes())) << 32 | u64::from(fnv1a32(b"plumber"));
    splitmix64(worker ^ u64::from(partition).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// A strong 64-bit mix (SplitMix64's finaliser): FNV alone spreads short,
/// similar inputs poorly.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Partition → the worker that should own it, for `partitions` partitions
/// among `members` (draining ones get none). A partition no worker has
/// room for (every worker at its `max_partitions`) is left out.
#[must_use]
pub fn assign(partitions: u32, members: &[Member]) -> BTreeMap<u32, String> {
    let workers: Vec<&Member> = members.iter().filter(|m| !m.draining).collect();
    let mut owners = BTreeMap::new();
    if workers.is_empty() {
        return owners;
    }
    let share = fair_share(partitions, workers.len());
    let mut pairs: Vec<(u64, usize, u32)> = Vec::with_capacity(partitions as usize * workers.len());
    for (index, worker) in workers.iter().enumerate() {
        for partition in 0..partitions {
            pairs.push((weight(&worker.id, partition), index, partition));
        }
    }
    // Heaviest first; ties (practically none) by worker then partition.
    pairs.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut load = vec![0u32; workers.len()];
    // First within the fair share; then, if some worker's own limit left
    // partitions over, up to each worker's limit.
    for fair in [true, false] {
        for &(_, index, partition) in &pairs {
            if owners.contains_key(&partition) {
                continue;
            }
            let own_limit = workers[index].max_partitions.unwrap_or(u32::MAX);
            let room = if fair {
                share.min(own_limit)
            } else {
                own_limit
            };
            if load[index] < room {
                load[index] += 1;
                owners.insert(partition, workers[index].id.clone());
            }
        }
        if owners.len() == partitions as usize {
            break;
        }
    }
    owners
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(ids: &[&str]) -> Vec<Member> {
        ids.iter()
            .map(|id| Member {
                id: (*id).to_owned(),
                max_partitions: None,
                draining: false,
            })
            .collect()
    }

    fn loads(owners: &BTreeMap<u32, String>) -> BTreeMap<String, u32> {
        let mut loads = BTreeMap::new();
        for owner in owners.values() {
            *loads.entry(owner.clone()).or_default() += 1;
        }
        loads
    }

    #[test]
    fn every_partition_is_owned_within_the_fair_share() {
        let owners = assign(64, &members(&["w1", "w2", "w3"]));
        assert_eq!(owners.len(), 64);
        for (worker, load) in loads(&owners) {
            assert!(load <= fair_share(64, 3), "{worker} owns {load}");
        }
        assert_eq!(fair_share(64, 3), 22);
        assert_eq!(fair_share(64, 0), 64);
    }

    #[test]
    fn adding_a_worker_moves_about_one_in_m_plus_one() {
        let three = assign(64, &members(&["w1", "w2", "w3"]));
        let four = assign(64, &members(&["w1", "w2", "w3", "w4"]));
        let moved = (0..64).filter(|p| three.get(p) != four.get(p)).count();
        let to_new = four.values().filter(|owner| *owner == "w4").count();
        assert_eq!(to_new, 16);
        // The new worker's share must move; little else should.
        assert!(moved <= 16 + 4, "{moved} of 64 partitions moved");
    }

    #[test]
    fn the_same_members_give_the_same_answer_in_any_order() {
        let a = assign(64, &members(&["w1", "w2", "w3"]));
        let b = assign(64, &members(&["w3", "w1", "w2"]));
        // Ties aside, the order of the list does not matter.
        assert_eq!(loads(&a), loads(&b));
        assert_eq!(a, b);
    }

    #[test]
    fn limits_and_draining_are_respected() {
        let mut list = members(&["w1", "w2", "w3"]);
        list[0].max_partitions = Some(5);
        list[2].draining = true;
        let owners = assign(64, &list);
        let loads = loads(&owners);
        assert_eq!(loads.get("w1"), Some(&5));
        assert_eq!(loads.get("w2"), Some(&59));
        assert_eq!(loads.get("w3"), None);
    }
}
