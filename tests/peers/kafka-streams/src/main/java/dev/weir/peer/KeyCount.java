package dev.weir.peer;

import java.nio.charset.StandardCharsets;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Grouped;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.state.KeyValueStore;

/**
 * The Kafka Streams twin of guest-examples/key-count: per key, a count in the
 * store `counts`; every input record emits, under its own key, the JSON
 * {"key": key, "count": n, "version": 1} (the shape weir's guest emits, with
 * its version 1 build). With caching off, `count()` forwards every update, so
 * there is one output per keyed input. Keyless records are dropped by
 * `groupByKey` (weir dead-letters them).
 */
final class KeyCount {
    private KeyCount() {}

    static Topology topology(String input, String output) {
        StreamsBuilder builder = new StreamsBuilder();
        builder.stream(input, Consumed.with(Serdes.ByteArray(), Serdes.ByteArray()))
                .groupByKey(Grouped.with(Serdes.ByteArray(), Serdes.ByteArray()))
                .count(Materialized.<byte[], Long, KeyValueStore<Bytes, byte[]>>as("counts")
                        .withKeySerde(Serdes.ByteArray())
                        .withValueSerde(Serdes.Long())
                        .withCachingDisabled())
                .toStream()
                .mapValues((key, count) -> Json.text(Json.object()
                        .put("key", new String(key, StandardCharsets.UTF_8))
                        .put("count", count)
                        .put("version", 1)))
                .to(output, Produced.with(Serdes.ByteArray(), Serdes.String()));
        return builder.build();
    }
}
