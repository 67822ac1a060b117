package dev.weir.peer;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.util.Map;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.kstream.Branched;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.GlobalKTable;
import org.apache.kafka.streams.kstream.KStream;
import org.apache.kafka.streams.kstream.KTable;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Named;
import org.apache.kafka.streams.kstream.Produced;

/**
 * guest-examples/enrichment in the Kafka Streams DSL, for the oracle. Orders
 * (keyed by customer id) are left-joined with the `customers` KTable
 * (co-partitioned, joined on the record key) and then with the `products`
 * GlobalKTable (joined on the order's `product_id`). A match embeds the
 * reference record under `customer` / `product`; a miss sends
 * {"order", "reason"} to `orders-unmatched` (weir's guest does the same from
 * a store lookup: a left join plus a split is the DSL's way to say it).
 * Enriched orders go to `orders-enriched`, keyed by customer id.
 *
 * Orders that weir's guest rejects with an error (not a JSON object, or the
 * join field is not a string) are dropped here; weir dead-letters them.
 */
final class Enrichment {
    private Enrichment() {}

    /** An order after one join: `reason` is null when the reference was found. */
    record Lookup(ObjectNode order, String reason) {}

    static Topology topology() {
        Serde<JsonNode> json = Json.nodeSerde();
        StreamsBuilder builder = new StreamsBuilder();
        KStream<String, JsonNode> orders = builder.stream("orders", Consumed.with(Serdes.String(), json));
        KTable<String, JsonNode> customers = builder.table("customers", Consumed.with(Serdes.String(), json),
                Materialized.as("customers"));
        GlobalKTable<String, JsonNode> products = builder.globalTable("products", Consumed.with(Serdes.String(), json),
                Materialized.as("products"));
        Produced<String, JsonNode> out = Produced.with(Serdes.String(), json);

        Map<String, KStream<String, Lookup>> byCustomer = orders
                .filter((key, order) -> hasString(order, "customer_id"), Named.as("has-customer-id"))
                .leftJoin(customers, (customerId, order, customer) ->
                        embed((ObjectNode) order, "customer", customer, customerId, "customers", "customer_id"))
                .split(Named.as("customer-"))
                .branch((key, l) -> l.reason() == null, Branched.as("found"))
                .defaultBranch(Branched.as("missing"));
        byCustomer.get("customer-missing").mapValues(Enrichment::unmatched).to("orders-unmatched", out);

        Map<String, KStream<String, Lookup>> byProduct = byCustomer.get("customer-found")
                .mapValues(Lookup::order)
                .filter((key, order) -> hasString(order, "product_id"), Named.as("has-product-id"))
                .leftJoin(products,
                        (key, order) -> order.get("product_id").textValue(),
                        (key, order, product) -> {
                            String productId = order.get("product_id").textValue();
                            return embed(order, "product", product, productId, "products", "product_id");
                        })
                .split(Named.as("product-"))
                .branch((key, l) -> l.reason() == null, Branched.as("found"))
                .defaultBranch(Branched.as("missing"));
        byProduct.get("product-found").mapValues(l -> (JsonNode) l.order()).to("orders-enriched", out);
        byProduct.get("product-missing").mapValues(Enrichment::unmatched).to("orders-unmatched", out);
        return builder.build();
    }

    private static boolean hasString(JsonNode order, String field) {
        return order != null && order.isObject() && order.path(field).isTextual();
    }

    private static Lookup embed(ObjectNode order, String into, JsonNode found, String reference, String store,
            String field) {
        if (found == null) {
            return new Lookup(order, "no `" + reference + "` in `" + store + "` (order field `" + field + "`)");
        }
        ObjectNode copy = order.deepCopy();
        copy.set(into, found);
        return new Lookup(copy, null);
    }

    private static JsonNode unmatched(Lookup l) {
        ObjectNode out = Json.object();
        out.set("order", l.order());
        return out.put("reason", l.reason());
    }
}
