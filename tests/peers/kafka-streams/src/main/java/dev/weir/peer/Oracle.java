package dev.weir.peer;

import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.BufferedReader;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.time.Instant;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import org.apache.kafka.common.header.internals.RecordHeaders;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.common.utils.Utils;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.TestInputTopic;
import org.apache.kafka.streams.TestOutputTopic;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.TopologyTestDriver;
import org.apache.kafka.streams.errors.LogAndContinueExceptionHandler;
import org.apache.kafka.streams.test.TestRecord;

/**
 * `oracle EXAMPLE INPUT_JSONL`: runs a weir example's logic, written in the
 * Kafka Streams DSL, through TopologyTestDriver over a `weir test` input
 * file, and prints every sink record as {"topic","key","value"} (keys and
 * values rendered as weir renders them), one JSON line each, in emission
 * order (the sinks are drained after every input record).
 *
 * Caching is off, so every update is emitted; records that fail to
 * deserialise are skipped (LogAndContinue: weir dead-letters them). The
 * driver has one partition per topic, so it cannot model a record on the
 * wrong partition: for an example with `partition_check: dead-letter`, input
 * records whose explicit `partition` is not the murmur2 partition of their
 * key are left out, as weir dead-letters them (a note goes to stderr).
 */
final class Oracle {
    /** An example: its topology, its sink topics, and the partition counts of its checked inputs. */
    record Example(Topology topology, List<String> sinks, Map<String, Integer> checkedPartitions) {}

    private Oracle() {}

    static Example example(String name) {
        return switch (name) {
            case "customer-position" -> new Example(CustomerPosition.topology(), List.of("us-share-holders"), Map.of());
            case "enrichment" -> new Example(Enrichment.topology(), List.of("orders-enriched", "orders-unmatched"),
                    Map.of("orders", 4, "customers", 4));
            case "key-count" -> new Example(KeyCount.topology("events", "counts"), List.of("counts"), Map.of());
            case "reservation" -> new Example(
                    Reservation.topology("orders", "adjustments", "orders-validated", "orders-rejected"),
                    List.of("orders-validated", "orders-rejected"), Map.of());
            default -> throw new IllegalArgumentException(
                    "unknown example `" + name + "`: expected customer-position, enrichment, key-count or reservation");
        };
    }

    static void run(String name, Path input) throws IOException {
        Example ex = example(name);
        Properties props = new Properties();
        props.put(StreamsConfig.APPLICATION_ID_CONFIG, name);
        props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, "oracle:9092");
        props.put(StreamsConfig.STATESTORE_CACHE_MAX_BYTES_CONFIG, 0);
        props.put(StreamsConfig.DESERIALIZATION_EXCEPTION_HANDLER_CLASS_CONFIG, LogAndContinueExceptionHandler.class);
        Path stateDir = Files.createTempDirectory("weir-oracle");
        props.put(StreamsConfig.STATE_DIR_CONFIG, stateDir.toString());
        try {
            drive(ex, props, input);
        } finally {
            Utils.delete(stateDir.toFile());
        }
    }

    private static void drive(Example ex, Properties props, Path input) throws IOException {
        try (TopologyTestDriver driver = new TopologyTestDriver(ex.topology(), props, Instant.EPOCH);
                BufferedReader lines = Files.newBufferedReader(input, StandardCharsets.UTF_8)) {
            Map<String, TestInputTopic<byte[], byte[]>> inputs = new HashMap<>();
            Map<String, TestOutputTopic<byte[], byte[]>> outputs = new HashMap<>();
            for (String sink : ex.sinks()) {
                outputs.put(sink, driver.createOutputTopic(sink, new ByteArrayDeserializer(), new ByteArrayDeserializer()));
            }
            String line;
            int number = 0;
            while ((line = lines.readLine()) != null) {
                number++;
                if (line.isBlank()) {
                    continue;
                }
                JsonNode rec;
                try {
                    rec = Json.MAPPER.readTree(line);
                } catch (JsonProcessingException e) {
                    throw new IllegalStateException("line " + number + ": not a JSON record line: " + e.getOriginalMessage());
                }
                if (rec.has("wall_clock")) {
                    driver.advanceWallClockTime(Duration.ofMillis(rec.get("wall_clock").asLong()));
                    continue;
                }
                String topic = rec.path("topic").asText();
                byte[] key = Json.inputBytes(rec.get("key"));
                Integer partitions = ex.checkedPartitions().get(topic);
                if (partitions != null && key != null && rec.hasNonNull("partition")) {
                    int given = rec.get("partition").asInt();
                    int murmur2 = Utils.toPositive(Utils.murmur2(key)) % partitions;
                    if (given != murmur2) {
                        System.err.println("line " + number + ": left out, on partition " + given
                                + " but murmur2 gives " + murmur2 + " (weir dead-letters it as a partition mismatch)");
                        continue;
                    }
                }
                TestInputTopic<byte[], byte[]> in = inputs.computeIfAbsent(topic,
                        t -> driver.createInputTopic(t, new ByteArraySerializer(), new ByteArraySerializer()));
                try {
                    in.pipeInput(new TestRecord<>(key, Json.inputBytes(rec.get("value")), headers(rec.get("headers")),
                            rec.path("timestamp").asLong(0)));
                } catch (IllegalArgumentException e) { // e.g. a topic the example does not read
                    throw new IllegalStateException("line " + number + ": " + e.getMessage(), e);
                }
                for (String sink : ex.sinks()) {
                    for (TestRecord<byte[], byte[]> out : outputs.get(sink).readRecordsToList()) {
                        ObjectNode o = Json.object().put("topic", sink);
                        o.set("key", Json.render(out.key()));
                        o.set("value", Json.render(out.value()));
                        System.out.println(Json.text(o));
                    }
                }
            }
        }
    }

    /** Headers as weir's input takes them: an object, or a list of [name, value] pairs. */
    private static RecordHeaders headers(JsonNode h) {
        RecordHeaders headers = new RecordHeaders();
        if (h == null || h.isNull()) {
            return headers;
        }
        if (h.isObject()) {
            h.properties().forEach(e -> headers.add(e.getKey(), orEmpty(Json.inputBytes(e.getValue()))));
        } else {
            for (JsonNode pair : h) {
                headers.add(pair.get(0).asText(), orEmpty(Json.inputBytes(pair.get(1))));
            }
        }
        return headers;
    }

    private static byte[] orEmpty(byte[] b) {
        return b == null ? new byte[0] : b;
    }
}
