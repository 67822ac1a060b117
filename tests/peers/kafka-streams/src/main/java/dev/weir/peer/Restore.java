package dev.weir.peer;

import java.time.Duration;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.processor.StateRestoreListener;

/**
 * The restore benchmark's peer: the KeyCount topology started with an empty
 * --state-dir restores its store `counts` from the changelog
 * `<application-id>-counts-changelog` (which `weir bench restore` filled, the
 * same records weir restores). Prints `restored RECORDS MS` once all
 * --partitions store partitions have finished restoring, MS counted from
 * `start()` (group join included, as weir's figure includes it), then closes.
 */
final class Restore {
    private Restore() {}

    static int run(Flags flags) throws InterruptedException {
        int partitions = flags.getInt("partitions", 4);
        KafkaStreams streams = new KafkaStreams(
                KeyCount.topology(flags.require("input"), flags.require("output")), Bench.properties(flags));
        AtomicInteger ended = new AtomicInteger();
        AtomicLong records = new AtomicLong();
        CountDownLatch done = new CountDownLatch(1);
        streams.setGlobalStateRestoreListener(new StateRestoreListener() {
            @Override
            public void onRestoreStart(TopicPartition partition, String store, long start, long end) {}

            @Override
            public void onBatchRestored(TopicPartition partition, String store, long batchEnd, long restored) {}

            @Override
            public void onRestoreEnd(TopicPartition partition, String store, long restored) {
                records.addAndGet(restored);
                if (ended.incrementAndGet() >= partitions) {
                    done.countDown();
                }
            }
        });
        long started = System.nanoTime();
        streams.start();
        boolean restored = done.await(600, TimeUnit.SECONDS);
        long ms = (System.nanoTime() - started) / 1_000_000;
        streams.close(Duration.ofSeconds(30));
        if (!restored) {
            System.err.println("restore did not finish within 600 s (" + ended.get() + " of " + partitions + " partitions)");
            return 1;
        }
        System.out.println("restored " + records.get() + " " + ms);
        System.out.flush();
        return 0;
    }
}
