package dev.weir.peer;

import java.nio.file.Path;
import java.time.Duration;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicBoolean;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler;

/**
 * Runs a benchmark peer (KeyCount or Reservation) against a real broker with
 * the settings weir is compared under: exactly_once_v2, caching off (so every
 * update is emitted, as weir does), the given commit interval and thread
 * count, RocksDB stores under --state-dir. Prints `running` once the instance
 * is RUNNING, errors to stderr, and runs until SIGTERM/SIGINT, when a
 * shutdown hook closes the instance cleanly, leaving the consumer group (the
 * JVM then exits 143, as on any SIGTERM). Exits 1 if the instance fails.
 */
final class Bench {
    private Bench() {}

    static int run(Topology topology, Flags flags) throws InterruptedException {
        Properties props = properties(flags);
        return runWith(new KafkaStreams(topology, props));
    }

    /** The settings every benchmark peer runs with (see the class docs). */
    static Properties properties(Flags flags) {
        Properties props = new Properties();
        props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, flags.require("bootstrap"));
        props.put(StreamsConfig.APPLICATION_ID_CONFIG, flags.require("application-id"));
        props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
        props.put(StreamsConfig.STATESTORE_CACHE_MAX_BYTES_CONFIG, 0);
        props.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, flags.getInt("commit-interval-ms", 100));
        props.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, flags.getInt("threads", 2));
        props.put(StreamsConfig.STATE_DIR_CONFIG, flags.get("state-dir",
                Path.of(System.getProperty("java.io.tmpdir"), "kafka-streams-peer").toString()));
        // Leave the group on close (Kafka Streams' default is to stay), so a
        // restarted peer does not wait out the old members' session timeout
        // (45 s) before it gets its tasks back. CloseOptions.leaveGroup does
        // this only for static members in 4.1.
        props.put(StreamsConfig.mainConsumerPrefix("internal.leave.group.on.close"), true);
        props.put(StreamsConfig.DEFAULT_KEY_SERDE_CLASS_CONFIG, Serdes.ByteArraySerde.class);
        props.put(StreamsConfig.DEFAULT_VALUE_SERDE_CLASS_CONFIG, Serdes.ByteArraySerde.class);
        return props;
    }

    private static int runWith(KafkaStreams streams) throws InterruptedException {
        CountDownLatch done = new CountDownLatch(1);
        int[] exit = {0};
        AtomicBoolean announced = new AtomicBoolean();
        streams.setStateListener((now, before) -> {
            if (now == KafkaStreams.State.RUNNING && !announced.getAndSet(true)) {
                System.out.println("running");
                System.out.flush();
            }
            if (now == KafkaStreams.State.ERROR) {
                System.err.println("kafka streams is in state ERROR");
                exit[0] = 1;
                done.countDown();
            }
            if (now == KafkaStreams.State.NOT_RUNNING) {
                done.countDown();
            }
        });
        streams.setUncaughtExceptionHandler(e -> {
            System.err.println("stream thread failed: " + e);
            e.printStackTrace();
            return StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
        });
        Thread hook = new Thread(() -> {
            streams.close(Duration.ofSeconds(30));
            done.countDown();
        }, "peer-shutdown");
        Runtime.getRuntime().addShutdownHook(hook);
        streams.start();
        done.await();
        if (exit[0] != 0) {
            try {
                Runtime.getRuntime().removeShutdownHook(hook);
            } catch (IllegalStateException shuttingDown) {
                // already in shutdown: the hook closes it
            }
            streams.close(Duration.ofSeconds(30));
        }
        return exit[0];
    }
}
