//! Which partition a key belongs to, and the names of a partition's
//! subjects, consumer and pipeline.
//!
//! The input stream's subject transform `<in>.*` →
//! `<in>-p.{{partition(N,1)}}.{{wildcard(1)}}` makes the server file each
//! message under its key's partition; the server's `partition(N, 1)` is
//! FNV-1a (32 bits) of the key token modulo N, which [`partition_of`]
//! computes too (the cluster tests check the two agree).

/// FNV-1a, 32 bits: the hash of NATS's `partition()` subject mapping.
#[must_use]
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    const OFFSET_BASIS: u32 = 0x811c_9dc5;
    const PRIME: u32 = 0x0100_0193;
    bytes.iter().fold(OFFSET_BASIS, |hash, byte| {
        (hash ^ u32::from(*byte)).wrapping_mul(PRIME)
    })
}

/// The partition (0 to `partitions - 1`) of `key` among `partitions`, as
/// the NATS server computes it; `partitions` of 0 is taken as 1.
#[must_use]
pub fn partition_of(key: &[u8], partitions: u32) -> u32 {
    fnv1a32(key) % partitions.max(1)
}

/// The names of one partitioned pipeline's parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionNames {
    /// The pipeline's name in its config.
    pub pipeline: String,
    /// The subject prefix events are published under: `<in>` of `<in>.<key>`.
    pub input: String,
    /// The prefix the stream files them under: `<in>-p` of `<in>-p.<p>.<key>`.
    pub partitioned: String,
    /// The source's durable consumer name, to which `-p<NN>` is added.
    pub consumer: String,
    /// How many partitions.
    pub partitions: u32,
}

impl PartitionNames {
    /// The names for `pipeline` reading `<input>.<key>` through consumers
    /// named after `consumer`, in `partitions` partitions.
    #[must_use]
    pub fn new(pipeline: &str, input: &str, consumer: &str, partitions: u32) -> Self {
        PartitionNames {
            pipeline: pipeline.to_owned(),
            input: input.to_owned(),
            partitioned: format!("{input}-p"),
            consumer: consumer.to_owned(),
            partitions: partitions.max(1),
        }
    }

    /// The partition's number as names show it: at least two digits, all
    /// of one width (`07` of 64, `0007` of 1024), so that names sort.
    #[must_use]
    pub fn number(&self, partition: u32) -> String {
        let width = (self.partitions - 1).to_string().len().max(2);
        format!("{partition:0width$}")
    }

    /// The partition task's pipeline name, `<pipeline>#p<NN>`: it keys the
    /// partition's checkpoints, state and fence, and prefixes its output's
    /// message ids.
    #[must_use]
    pub fn task(&self, partition: u32) -> String {
        format!("{}#p{}", self.pipeline, self.number(partition))
    }

    /// The partition's durable consumer, `<consumer>-p<NN>`.
    #[must_use]
    pub fn consumer(&self, partition: u32) -> String {
        format!("{}-p{}", self.consumer, self.number(partition))
    }

    /// The subjects of the partition's messages, `<in>-p.<p>.>` (the server
    /// writes the partition without leading zeros).
    #[must_use]
    pub fn filter_subject(&self, partition: u32) -> String {
        format!("{}.{partition}.>", self.partitioned)
    }

    /// What the input stream captures: `<in>.*`.
    #[must_use]
    pub fn captured(&self) -> String {
        format!("{}.*", self.input)
    }

    /// The subject transform's destination:
    /// `<in>-p.{{partition(N,1)}}.{{wildcard(1)}}`.
    #[must_use]
    pub fn transform_destination(&self) -> String {
        format!(
            "{}.{{{{partition({},1)}}}}.{{{{wildcard(1)}}}}",
            self.partitioned, self.partitions
        )
    }

    /// The partition count written in a transform destination made by
    /// [`PartitionNames::transform_destination`] (for any count), if it is
    /// one.
    #[must_use]
    pub fn partitions_in(&self, destination: &str) -> Option<u32> {
        let rest = destination.strip_prefix(&format!("{}.{{{{partition(", self.partitioned))?;
        let (count, rest) = rest.split_once(",1)}}")?;
        (rest == ".{{wildcard(1)}}")
            .then(|| count.trim().parse().ok())
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a32_matches_the_reference_vectors() {
        // From the FNV reference (draft-eastlake-fnv, test vectors).
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn names_have_one_width_and_round_trip_the_count() {
        let names = PartitionNames::new("orders", "in", "count", 64);
        assert_eq!(names.task(7), "orders#p07");
        assert_eq!(names.consumer(63), "count-p63");
        assert_eq!(names.filter_subject(7), "in-p.7.>");
        assert_eq!(
            names.transform_destination(),
            "in-p.{{partition(64,1)}}.{{wildcard(1)}}"
        );
        assert_eq!(
            names.partitions_in(&names.transform_destination()),
            Some(64)
        );
        assert_eq!(
            names.partitions_in("in-p.{{partition(8,1)}}.{{wildcard(1)}}"),
            Some(8)
        );
        assert_eq!(names.partitions_in("other.{{wildcard(1)}}"), None);
        let wide = PartitionNames::new("orders", "in", "count", 1024);
        assert_eq!(wide.task(7), "orders#p0007");
        let one = PartitionNames::new("orders", "in", "count", 1);
        assert_eq!(one.task(0), "orders#p00");
    }
}
