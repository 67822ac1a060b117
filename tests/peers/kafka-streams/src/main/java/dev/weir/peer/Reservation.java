package dev.weir.peer;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.util.List;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.kstream.Branched;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.KStream;
import org.apache.kafka.streams.kstream.Named;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.kstream.Repartitioned;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.state.KeyValueStore;
import org.apache.kafka.streams.state.Stores;

/**
 * The Kafka Streams twin of guest-examples/reservation. Orders (keyed by
 * order id) are rekeyed by `product_id` through the repartition topic
 * `<application.id>-orders-by-product-repartition`; the `reserve` processor
 * gets those and the adjustments stream (keyed by product id, co-partitioned)
 * and keeps `stock` (product id → level) in a RocksDB store:
 * <ul>
 *   <li>an adjustment {"product_id", "delta"} adds `delta` to its product's
 *       stock (absent = 0; it may go negative) and emits nothing;</li>
 *   <li>an order {"order_id", "product_id", "qty"} with `qty` ≤ the stock
 *       takes `qty` off and goes to `validated`, else to `rejected` (an unknown
 *       product has stock 0), keyed by order id, as
 *       {"order_id","product_id","qty","status","stock"}: the stock left
 *       (validated) or available (rejected).</li>
 * </ul>
 * Records weir dead-letters (malformed JSON, a missing or mistyped field, an
 * order with qty ≤ 0) are dropped with a line on stderr.
 */
final class Reservation {
    private Reservation() {}

    static Topology topology(String orders, String adjustments, String validated, String rejected) {
        StreamsBuilder builder = new StreamsBuilder();
        builder.addStateStore(Stores.keyValueStoreBuilder(
                Stores.persistentKeyValueStore("stock"), Serdes.String(), Serdes.Long()));

        KStream<String, byte[]> byProduct = builder
                .stream(orders, Consumed.with(Serdes.String(), Serdes.ByteArray()))
                .flatMap((orderKey, value) -> {
                    Order order = Order.parse(value);
                    return order == null ? List.<KeyValue<String, byte[]>>of() : List.of(KeyValue.pair(order.productId, value));
                }, Named.as("rekey"))
                .repartition(Repartitioned.<String, byte[]>as("orders-by-product")
                        .withKeySerde(Serdes.String())
                        .withValueSerde(Serdes.ByteArray()));
        KStream<String, byte[]> adjusts =
                builder.stream(adjustments, Consumed.with(Serdes.String(), Serdes.ByteArray()));

        byProduct.merge(adjusts)
                .process(() -> new Reserve(adjustments), Named.as("reserve"), "stock")
                .split(Named.as("decision-"))
                .branch((orderId, d) -> d.validated(), Branched.withConsumer(s -> s
                        .mapValues(Decision::json)
                        .to(validated, Produced.with(Serdes.String(), Serdes.String()))))
                .defaultBranch(Branched.withConsumer(s -> s
                        .mapValues(Decision::json)
                        .to(rejected, Produced.with(Serdes.String(), Serdes.String()))));
        return builder.build();
    }

    /** What `reserve` decided for one order: the JSON to emit and where it goes. */
    record Decision(boolean validated, String json) {}

    /** The `reserve` step: adjustments change stock; orders reserve it. */
    static final class Reserve implements Processor<String, byte[], String, Decision> {
        private final String adjustmentsTopic;
        private ProcessorContext<String, Decision> context;
        private KeyValueStore<String, Long> stock;

        Reserve(String adjustmentsTopic) {
            this.adjustmentsTopic = adjustmentsTopic;
        }

        @Override
        public void init(ProcessorContext<String, Decision> context) {
            this.context = context;
            this.stock = context.getStateStore("stock");
        }

        @Override
        public void process(Record<String, byte[]> rec) {
            String topic = context.recordMetadata().map(m -> m.topic()).orElse("");
            if (topic.equals(adjustmentsTopic)) {
                adjust(rec.value());
            } else {
                reserve(rec);
            }
        }

        private void adjust(byte[] value) {
            JsonNode adj;
            try {
                adj = value == null ? null : Json.parse(value);
            } catch (IOException e) {
                adj = null;
            }
            if (adj == null) {
                System.err.println("adjustment dropped: value is not valid JSON");
                return;
            }
            JsonNode product = adj.get("product_id");
            JsonNode delta = adj.get("delta");
            if (product == null || !product.isTextual() || delta == null || !delta.isIntegralNumber()
                    || !delta.canConvertToLong()) {
                System.err.println("adjustment dropped: needs string product_id and integer delta: " + adj);
                return;
            }
            Long level = stock.get(product.textValue());
            stock.put(product.textValue(), (level == null ? 0 : level) + delta.longValue());
        }

        private void reserve(Record<String, byte[]> rec) {
            Order order = Order.parse(rec.value());
            if (order == null) {
                return;
            }
            Long level = stock.get(order.productId);
            long left = level == null ? 0 : level;
            boolean ok = left >= order.qty;
            long reported = ok ? left - order.qty : left;
            if (ok) {
                stock.put(order.productId, reported);
            }
            ObjectNode out = Json.object()
                    .put("order_id", order.orderId)
                    .put("product_id", order.productId)
                    .put("qty", order.qty)
                    .put("status", ok ? "validated" : "rejected")
                    .put("stock", reported);
            context.forward(rec.withKey(order.orderId).withValue(new Decision(ok, Json.text(out))));
        }
    }

    /** An order as the guest parses it: string ids, a positive integer qty. */
    static final class Order {
        final String orderId;
        final String productId;
        final long qty;

        private Order(String orderId, String productId, long qty) {
            this.orderId = orderId;
            this.productId = productId;
            this.qty = qty;
        }

        /** The order, or null (with a line on stderr) for what weir dead-letters. */
        static Order parse(byte[] value) {
            JsonNode v;
            try {
                v = value == null ? null : Json.parse(value);
            } catch (IOException e) {
                v = null;
            }
            if (v == null || !v.isObject()) {
                System.err.println("order dropped: value is not a JSON object");
                return null;
            }
            JsonNode id = v.get("order_id");
            JsonNode product = v.get("product_id");
            JsonNode qty = v.get("qty");
            if (id == null || !id.isTextual() || product == null || !product.isTextual() || qty == null
                    || !qty.isIntegralNumber() || !qty.canConvertToLong()) {
                System.err.println("order dropped: needs string order_id, product_id and integer qty: " + v);
                return null;
            }
            if (qty.longValue() <= 0) {
                System.err.println("order dropped: order " + id.textValue() + " has quantity " + qty.longValue()
                        + "; quantities must be positive");
                return null;
            }
            return new Order(id.textValue(), product.textValue(), qty.longValue());
        }
    }
}
