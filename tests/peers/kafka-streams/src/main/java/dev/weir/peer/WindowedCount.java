package dev.weir.peer;

import java.nio.charset.StandardCharsets;
import java.time.Duration;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Grouped;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.kstream.Suppressed;
import org.apache.kafka.streams.kstream.TimeWindows;
import org.apache.kafka.streams.state.WindowStore;

/**
 * The Kafka Streams twin of weir's windowed bench scenario (the page-views
 * example as a tumbling window): per key, a count in 60 s tumbling windows
 * with 10 s grace, each emitted once when its window closes
 * (`suppress(untilWindowCloses)`), under the record key, as the JSON
 * {"key", "start", "end", "value"} weir's WindowResult has.
 */
final class WindowedCount {
    private WindowedCount() {}

    static Topology topology(String input, String output) {
        StreamsBuilder builder = new StreamsBuilder();
        builder.stream(input, Consumed.with(Serdes.ByteArray(), Serdes.ByteArray()))
                .groupByKey(Grouped.with(Serdes.ByteArray(), Serdes.ByteArray()))
                .windowedBy(TimeWindows.ofSizeAndGrace(Duration.ofSeconds(60), Duration.ofSeconds(10)))
                .count(Materialized.<byte[], Long, WindowStore<Bytes, byte[]>>as("windows")
                        .withKeySerde(Serdes.ByteArray())
                        .withValueSerde(Serdes.Long())
                        .withCachingDisabled())
                .suppress(Suppressed.untilWindowCloses(Suppressed.BufferConfig.unbounded()))
                .toStream()
                .map((windowed, count) -> KeyValue.pair(windowed.key(), Json.text(Json.object()
                        .put("key", new String(windowed.key(), StandardCharsets.UTF_8))
                        .put("start", windowed.window().start())
                        .put("end", windowed.window().end())
                        .put("value", count))))
                .to(output, Produced.with(Serdes.ByteArray(), Serdes.String()));
        return builder.build();
    }
}
