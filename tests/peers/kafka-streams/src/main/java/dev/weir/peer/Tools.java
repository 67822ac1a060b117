package dev.weir.peer;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.ExecutionException;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.errors.TopicExistsException;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;

/**
 * Small broker tools for trying the bench peers by hand: create topics,
 * produce `weir test`-format JSONL from stdin, and consume topics
 * (read_committed, from the beginning) as weir's output JSONL.
 */
final class Tools {
    private Tools() {}

    /** `create-topics --bootstrap B [--partitions 4] TOPIC...`; existing topics are fine. */
    static void createTopics(Flags flags) throws InterruptedException, ExecutionException {
        int partitions = flags.getInt("partitions", 4);
        try (Admin admin = Admin.create(Map.of(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, flags.require("bootstrap")))) {
            for (String topic : flags.positional()) {
                try {
                    admin.createTopics(List.of(new NewTopic(topic, partitions, (short) 1))).all().get();
                } catch (ExecutionException e) {
                    if (!(e.getCause() instanceof TopicExistsException)) {
                        throw e;
                    }
                }
            }
        }
    }

    /**
     * `produce --bootstrap B [--topic T]`: one record per stdin line in the
     * `weir test` input format; a line's own "topic" wins over --topic, an
     * explicit "partition" is used as is, else the default (murmur2) partitioner.
     */
    static void produce(Flags flags) throws Exception {
        Properties props = new Properties();
        props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, flags.require("bootstrap"));
        props.put(ProducerConfig.ACKS_CONFIG, "all");
        props.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class);
        props.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class);
        String fallbackTopic = flags.get("topic", null);
        int sent = 0;
        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(props);
                BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8))) {
            String line;
            while ((line = in.readLine()) != null) {
                if (line.isBlank()) {
                    continue;
                }
                JsonNode rec = Json.MAPPER.readTree(line);
                String topic = rec.hasNonNull("topic") ? rec.get("topic").asText() : fallbackTopic;
                if (topic == null) {
                    throw new IllegalArgumentException("line without \"topic\" and no --topic: " + line);
                }
                Integer partition = rec.hasNonNull("partition") ? rec.get("partition").asInt() : null;
                Long timestamp = rec.hasNonNull("timestamp") ? rec.get("timestamp").asLong() : null;
                producer.send(new ProducerRecord<>(topic, partition, timestamp,
                        Json.inputBytes(rec.get("key")), Json.inputBytes(rec.get("value")))).get();
                sent++;
            }
        }
        System.err.println("produced " + sent + " records");
    }

    /**
     * `consume --bootstrap B [--idle-ms 3000] [--limit N] [--isolation read_committed] TOPIC...`:
     * every committed record (or every record, with --isolation read_uncommitted) of the topics, from the beginning, as
     * {"topic","partition","key","value","timestamp","headers"}; stops after
     * --limit records or when nothing arrives for --idle-ms.
     */
    static void consume(Flags flags) {
        Properties props = new Properties();
        props.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, flags.require("bootstrap"));
        props.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, flags.get("isolation", "read_committed"));
        props.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, false);
        props.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class);
        props.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class);
        long idleMs = flags.getInt("idle-ms", 3000);
        long limit = flags.getInt("limit", Integer.MAX_VALUE);
        try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(props)) {
            List<TopicPartition> partitions = new ArrayList<>();
            for (String topic : flags.positional()) {
                consumer.partitionsFor(topic).forEach(p -> partitions.add(new TopicPartition(topic, p.partition())));
            }
            consumer.assign(partitions);
            consumer.seekToBeginning(partitions);
            long seen = 0;
            long lastRecord = System.currentTimeMillis();
            while (seen < limit && System.currentTimeMillis() - lastRecord < idleMs) {
                for (ConsumerRecord<byte[], byte[]> r : consumer.poll(Duration.ofMillis(200))) {
                    lastRecord = System.currentTimeMillis();
                    ObjectNode o = Json.object().put("topic", r.topic()).put("partition", r.partition());
                    o.set("key", Json.render(r.key()));
                    o.set("value", Json.render(r.value()));
                    o.put("timestamp", r.timestamp());
                    ArrayNode headers = o.putArray("headers");
                    for (Header h : r.headers()) {
                        headers.addArray().add(h.key()).add(Json.render(h.value()));
                    }
                    System.out.println(Json.text(o));
                    if (++seen >= limit) {
                        break;
                    }
                }
            }
        }
    }
}
