package dev.weir.peer;

import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;

/**
 * Entry point: dispatches to a mode. `bench-key-count` and
 * `bench-reservation` run the Kafka Streams benchmark peers against a broker;
 * `oracle` runs an example in TopologyTestDriver; `create-topics`, `produce`
 * and `consume` are small broker tools. See README.md.
 */
public final class Main {
    private static final String USAGE = String.join("\n",
            "usage: java -cp 'target/kafka-streams-peer.jar:target/libs/*' dev.weir.peer.Main MODE ...",
            "  bench-key-count   --bootstrap H:P --application-id ID --input T --output T",
            "  bench-windowed-count  (the same flags: 60 s tumbling windows, 10 s grace, emitted on close)",
            "                    [--commit-interval-ms 100] [--threads 2] [--state-dir DIR]",
            "  bench-reservation --bootstrap H:P --application-id ID --orders T --adjustments T",
            "                    --validated T --rejected T [--commit-interval-ms 100] [--threads 2] [--state-dir DIR]",
            "  bench-restore     --bootstrap H:P --application-id ID --input T --output T [--partitions 4]",
            "                    (restores KeyCount's `counts` from ID-counts-changelog, prints `restored N MS`)",
            "  oracle EXAMPLE INPUT_JSONL   (EXAMPLE: customer-position, enrichment, key-count, reservation)",
            "  create-topics --bootstrap H:P [--partitions 4] TOPIC...",
            "  produce --bootstrap H:P [--topic T]           (weir JSONL records on stdin)",
            "  consume --bootstrap H:P [--idle-ms 3000] [--limit N] TOPIC...   (read_committed, weir JSONL)");

    private Main() {}

    public static void main(String[] args) {
        // UTF-8 whatever the locale: the output is JSON text.
        System.setOut(new PrintStream(new FileOutputStream(FileDescriptor.out), true, StandardCharsets.UTF_8));
        System.setErr(new PrintStream(new FileOutputStream(FileDescriptor.err), true, StandardCharsets.UTF_8));
        if (args.length == 0) {
            System.err.println(USAGE);
            System.exit(2);
        }
        int code;
        try {
            code = run(args[0], new Flags(args, 1));
        } catch (IllegalArgumentException e) {
            System.err.println("error: " + e.getMessage() + "\n" + USAGE);
            code = 2;
        } catch (IllegalStateException e) {
            System.err.println("error: " + e.getMessage());
            code = 1;
        } catch (Exception e) {
            System.err.println("error: " + e);
            e.printStackTrace();
            code = 1;
        }
        System.out.flush();
        if (code != 0) {
            System.exit(code);
        }
    }

    private static int run(String mode, Flags f) throws Exception {
        switch (mode) {
            case "bench-key-count":
                return Bench.run(KeyCount.topology(f.require("input"), f.require("output")), f);
            case "bench-restore":
                return Restore.run(f);
            case "bench-windowed-count":
                return Bench.run(WindowedCount.topology(f.require("input"), f.require("output")), f);
            case "bench-reservation":
                return Bench.run(Reservation.topology(f.require("orders"), f.require("adjustments"),
                        f.require("validated"), f.require("rejected")), f);
            case "oracle":
                if (f.positional().size() != 2) {
                    throw new IllegalArgumentException("oracle takes EXAMPLE INPUT_JSONL");
                }
                Oracle.run(f.positional().get(0), Path.of(f.positional().get(1)));
                return 0;
            case "create-topics":
                Tools.createTopics(f);
                return 0;
            case "produce":
                Tools.produce(f);
                return 0;
            case "consume":
                Tools.consume(f);
                return 0;
            default:
                throw new IllegalArgumentException("unknown mode `" + mode + "`");
        }
    }
}
