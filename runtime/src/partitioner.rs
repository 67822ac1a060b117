//! Kafka's default partitioner: `murmur2(key) & 0x7fffffff % partitions`,
//! bit-compatible with the Java client's `Utils.murmur2` and librdkafka's
//! `murmur2_random` partitioner for keyed records.
//!
//! Every record weir writes (sinks, repartition topics, changelogs, dead
//! letters) is partitioned with this function, so weir's output lines up with
//! streams produced by Java and librdkafka producers, and the per-record
//! co-partitioning check can tell when an upstream producer did not.

/// Kafka's murmur2 hash of `data` (`org.apache.kafka.common.utils.Utils.murmur2`).
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;

    let mut h: u32 = SEED ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    // The Java switch falls through: 3 bytes mix all three, 2 mix two, 1 mixes one.
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka's default partitioner assigns to a record with `key`
/// on a topic with `partitions` partitions.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    debug_assert!(partitions > 0, "a topic has at least one partition");
    let positive = (murmur2(key) & 0x7fff_ffff) as u32;
    positive % partitions.max(1)
}

/// Partition for a record weir writes. Keyless records stay on the writing
/// task's partition (modulo the target's count): deterministic, so a replay
/// after a crash writes them to the same place.
pub fn partition_for(key: Option<&[u8]>, partitions: u32, task_partition: u32) -> u32 {
    match key {
        Some(k) => partition_for_key(k, partitions),
        None => task_partition % partitions.max(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `UtilsTest.testMurmur2` from the Apache Kafka Java client.
    #[test]
    fn matches_the_java_client() {
        let cases: &[(&[u8], i32)] = &[
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
            (b"abc", 479_470_107),
        ];
        for (key, expected) in cases {
            assert_eq!(murmur2(key), *expected, "key {:?}", String::from_utf8_lossy(key));
        }
    }

    /// `unittest_murmur2` from librdkafka (`java_murmur2_results`), which
    /// covers every tail length and the empty key.
    #[test]
    fn matches_librdkafka() {
        let cases: &[(&[u8], u32)] = &[
            (b"kafka", 0xd067_cf64),
            (b"giberish123456789", 0x8f55_2b0c),
            (b"1234", 0x9fc9_7b14),
            (b"234", 0xe7c0_09ca),
            (b"34", 0x8739_30da),
            (b"4", 0x5a4b_5ca1),
            (b"PreAmbleWillBeRemoved,ThePrePartThatIs", 0x7842_4f1c),
            (b"reAmbleWillBeRemoved,ThePrePartThatIs", 0x4a62_b377),
            (b"eAmbleWillBeRemoved,ThePrePartThatIs", 0xe0e4_e09e),
            (b"AmbleWillBeRemoved,ThePrePartThatIs", 0x62b8_b43f),
            (b"", 0x106e_08d9),
        ];
        for (key, expected) in cases {
            assert_eq!(murmur2(key) as u32, *expected, "key {:?}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn partition_is_positive_hash_modulo_count() {
        // -973932308 & 0x7fffffff = 1173551340; 1173551340 % 4 = 0, % 7 = 1.
        assert_eq!(partition_for_key(b"21", 4), 0);
        assert_eq!(partition_for_key(b"21", 7), 1173551340 % 7);
        // 0xd067cf64 & 0x7fffffff = 1348980580.
        assert_eq!(partition_for_key(b"kafka", 10), 1348980580 % 10);
        for p in 1..20 {
            assert!(partition_for_key(b"foobar", p) < p);
        }
    }

    #[test]
    fn keyless_records_follow_the_task() {
        assert_eq!(partition_for(None, 4, 6), 2);
        assert_eq!(partition_for(Some(b"21"), 4, 6), 0);
    }
}
