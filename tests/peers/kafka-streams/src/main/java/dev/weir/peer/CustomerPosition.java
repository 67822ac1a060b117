package dev.weir.peer;

import com.fasterxml.jackson.core.type.TypeReference;
import com.fasterxml.jackson.databind.JsonNode;
import java.util.List;
import java.util.TreeSet;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Grouped;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.state.KeyValueStore;

/**
 * guest-examples/customer-position in the Kafka Streams DSL, for the oracle:
 * the `positions` table (position id → {"id","client","ticker","amount",
 * "exchange"}), filtered to US exchanges (NASDAQ, NYSE, case-insensitive),
 * grouped by client through `<app>-positions-by-client-repartition` and
 * aggregated with an adder and a subtractor into the client's sorted set of
 * position ids, stored in `us-share-holders` and emitted to
 * `us-share-holders` as {"client", "positions": [...]}; an emptied set is a
 * tombstone.
 */
final class CustomerPosition {
    static final List<String> US_EXCHANGES = List.of("NASDAQ", "NYSE");

    private CustomerPosition() {}

    static Topology topology() {
        Serde<JsonNode> json = Json.nodeSerde();
        Serde<TreeSet<String>> set = Json.serde(new TypeReference<TreeSet<String>>() {});
        StreamsBuilder builder = new StreamsBuilder();
        builder.table("positions", Consumed.with(Serdes.String(), json), Materialized.as("positions"))
                .filter((id, p) -> onUsExchange(p))
                .groupBy((id, p) -> KeyValue.pair(p.get("client").asText(), p.get("id").asText()),
                        Grouped.with("positions-by-client", Serdes.String(), Serdes.String()))
                .aggregate(
                        TreeSet::new,
                        (client, position, positions) -> {
                            TreeSet<String> next = new TreeSet<>(positions);
                            next.add(position);
                            return next;
                        },
                        (client, position, positions) -> {
                            TreeSet<String> next = new TreeSet<>(positions);
                            next.remove(position);
                            return next.isEmpty() ? null : next; // null: delete the client
                        },
                        Materialized.<String, TreeSet<String>, KeyValueStore<Bytes, byte[]>>as("us-share-holders")
                                .withKeySerde(Serdes.String())
                                .withValueSerde(set)
                                .withCachingDisabled())
                .mapValues((client, positions) -> (JsonNode) holder(client, positions))
                .toStream()
                .to("us-share-holders", Produced.with(Serdes.String(), json));
        return builder.build();
    }

    /** A well-formed position (the fields the guest requires) on a US exchange. */
    static boolean onUsExchange(JsonNode p) {
        if (p == null || !p.path("id").isTextual() || !p.path("client").isTextual() || !p.path("exchange").isTextual()) {
            return false;
        }
        String exchange = p.get("exchange").textValue();
        return US_EXCHANGES.stream().anyMatch(e -> e.equalsIgnoreCase(exchange));
    }

    private static JsonNode holder(String client, TreeSet<String> positions) {
        var out = Json.object().put("client", client);
        positions.forEach(out.putArray("positions")::add);
        return out;
    }
}
