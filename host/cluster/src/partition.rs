//! Which partition a key belongs to, and the names of a partition's
//! subjects, consumer and pipeline.
//!
//! The input stream's subject transform `<in>.*` →
//! `<in>-p.{{partition(N,1)}}.{{wildcard(1)}}` makes the server file each
//! message under its key's partition; the server's `partition(N, 1)` is
//! FNV-1a (32 bits) of the key token modulo N, which [`partition_of`]
//! computes too (the cluster tests check the two agree).

// One partition function for the cluster and the engine's shuffle (which
// addresses watermark messages to partitions).
pub use plumber_engine::shuffle::{fnv1a32, partition_of};

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
    /// How many stages (1, or 2 with a `repartition` step): a worker runs
    /// `partitions × stages` tasks, numbered stage by stage (task `t` is
    /// partition `t % partitions` of stage `t / partitions + 1`).
    pub stages: u32,
    /// How many times `plumber cluster migrate` changed the partition
    /// count (0 at first). A generation's tasks, consumers and leases have
    /// names of their own (`g<k>` before the partition's tag), so a
    /// migration writes the new generation's state beside the old one's
    /// and switches at once.
    pub generation: u32,
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
            stages: 1,
            generation: 0,
        }
    }

    /// The same names in generation `generation`.
    #[must_use]
    pub fn with_generation(mut self, generation: u32) -> Self {
        self.generation = generation;
        self
    }

    /// What the generation adds to names: nothing for the first, `g<k>`
    /// for later ones.
    fn generation_tag(&self) -> String {
        if self.generation == 0 {
            String::new()
        } else {
            format!("g{}", self.generation)
        }
    }

    /// The same names for a pipeline of `stages` stages (at least 1).
    #[must_use]
    pub fn with_stages(mut self, stages: u32) -> Self {
        self.stages = stages.max(1);
        self
    }

    /// How many tasks the workers run: `partitions × stages`.
    #[must_use]
    pub fn tasks(&self) -> u32 {
        self.partitions * self.stages
    }

    /// Task `task`'s stage (from 1) and partition.
    #[must_use]
    pub fn stage_of(&self, task: u32) -> (u32, u32) {
        (task / self.partitions + 1, task % self.partitions)
    }

    /// What names add to mark task `task`'s partition: `p<NN>` with one
    /// stage, `s<k>p<NN>` with several, after the generation's tag.
    fn tag(&self, task: u32) -> String {
        let (stage, partition) = self.stage_of(task);
        let generation = self.generation_tag();
        if self.stages == 1 {
            format!("{generation}p{}", self.number(partition))
        } else {
            format!("{generation}s{stage}p{}", self.number(partition))
        }
    }

    /// The key of task `task`'s lease in the lease bucket: `p<NN>` (one
    /// stage) or `s<k>p<NN>`.
    #[must_use]
    pub fn lease_key(&self, task: u32) -> String {
        self.tag(task)
    }

    /// The task whose lease key is `key`, if it is one of this pipeline's.
    #[must_use]
    pub fn task_of_lease_key(&self, key: &str) -> Option<u32> {
        let tag = key.strip_prefix(&self.generation_tag())?;
        let (stage, number) = if self.stages == 1 {
            (1, tag.strip_prefix('p')?)
        } else {
            let (stage, number) = tag.strip_prefix('s')?.split_once('p')?;
            (stage.parse::<u32>().ok()?, number)
        };
        let partition = number.parse::<u32>().ok()?;
        if !(1..=self.stages).contains(&stage) || partition >= self.partitions {
            return None;
        }
        let task = (stage - 1) * self.partitions + partition;
        // Only the spelling names make (one width of digits).
        (self.tag(task) == key).then_some(task)
    }

    /// The partition's number as names show it: at least two digits, all
    /// of one width (`07` of 64, `0007` of 1024), so that names sort.
    #[must_use]
    pub fn number(&self, partition: u32) -> String {
        let width = (self.partitions - 1).to_string().len().max(2);
        format!("{partition:0width$}")
    }

    /// The partition task's pipeline name, `<pipeline>#p<NN>` (with two
    /// stages, `<pipeline>.s<k>#p<NN>`; after a migration, `g<k>` before
    /// the `p`): it keys the task's checkpoints,
    /// state and fence, and prefixes its output's message ids.
    #[must_use]
    pub fn task(&self, task: u32) -> String {
        let (stage, partition) = self.stage_of(task);
        let generation = self.generation_tag();
        if self.stages == 1 {
            format!("{}#{generation}p{}", self.pipeline, self.number(partition))
        } else {
            format!(
                "{}.s{stage}#{generation}p{}",
                self.pipeline,
                self.number(partition)
            )
        }
    }

    /// The task's durable consumer, `<consumer>-p<NN>` (with two stages,
    /// `<consumer>-s<k>p<NN>`).
    #[must_use]
    pub fn consumer(&self, task: u32) -> String {
        format!("{}-{}", self.consumer, self.tag(task))
    }

    /// The subjects of the partition's messages in this stream,
    /// `<in>-p.<p>.>` (the server writes the partition without leading
    /// zeros).
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
        assert_eq!(names.lease_key(7), "p07");
        assert_eq!(names.tasks(), 64);
    }

    #[test]
    fn two_stages_double_the_tasks_with_names_of_their_own() {
        let names = PartitionNames::new("orders", "in", "count", 16).with_stages(2);
        assert_eq!(names.tasks(), 32);
        assert_eq!(names.stage_of(3), (1, 3));
        assert_eq!(names.stage_of(19), (2, 3));
        assert_eq!(names.task(3), "orders.s1#p03");
        assert_eq!(names.task(19), "orders.s2#p03");
        assert_eq!(names.consumer(19), "count-s2p03");
        assert_eq!(names.lease_key(19), "s2p03");
        assert_eq!(names.task_of_lease_key("s2p03"), Some(19));
        assert_eq!(names.task_of_lease_key("p03"), None);
        let all: std::collections::BTreeSet<String> =
            (0..names.tasks()).map(|task| names.task(task)).collect();
        assert_eq!(all.len(), 32);
    }

    #[test]
    fn a_later_generation_names_its_tasks_consumers_and_leases_apart() {
        let first = PartitionNames::new("orders", "in", "count", 16);
        let second = first.clone().with_generation(2);
        assert_eq!(second.task(3), "orders#g2p03");
        assert_eq!(second.consumer(3), "count-g2p03");
        assert_eq!(second.lease_key(3), "g2p03");
        assert_eq!(second.task_of_lease_key("g2p03"), Some(3));
        // The generations never read each other's leases.
        assert_eq!(second.task_of_lease_key("p03"), None);
        assert_eq!(first.task_of_lease_key("g2p03"), None);
        // The subjects are the stream's, not the generation's.
        assert_eq!(second.filter_subject(3), first.filter_subject(3));
        let staged = second.with_stages(2);
        assert_eq!(staged.task(19), "orders.s2#g2p03");
        assert_eq!(staged.task_of_lease_key("g2s2p03"), Some(19));
    }
}
