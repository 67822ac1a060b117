package dev.weir.peer;

import com.fasterxml.jackson.core.type.TypeReference;
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.JsonNodeFactory;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.util.Base64;
import org.apache.kafka.common.errors.SerializationException;
import org.apache.kafka.common.serialization.Deserializer;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.Serializer;

/**
 * JSON helpers shared by every mode: one strict ObjectMapper, Kafka serdes for
 * JSON values, and weir's JSONL byte conventions (README "weir test"): how an
 * input line's key/value becomes bytes and how output bytes are rendered.
 */
final class Json {
    /** Strict like serde_json: one JSON document, nothing after it. */
    static final ObjectMapper MAPPER =
            new ObjectMapper().enable(DeserializationFeature.FAIL_ON_TRAILING_TOKENS);

    private Json() {}

    static ObjectNode object() {
        return JsonNodeFactory.instance.objectNode();
    }

    /** Parses bytes as one JSON document; throws on anything else. */
    static JsonNode parse(byte[] bytes) throws IOException {
        JsonNode node = MAPPER.readTree(bytes);
        if (node == null || node.isMissingNode()) {
            throw new IOException("no JSON document (empty input)");
        }
        return node;
    }

    static byte[] bytes(Object value) {
        try {
            return MAPPER.writeValueAsBytes(value);
        } catch (IOException e) {
            throw new SerializationException(e);
        }
    }

    static String text(Object value) {
        return new String(bytes(value), StandardCharsets.UTF_8);
    }

    /**
     * A serde of JSON documents of type T. Bytes that are not such a document
     * fail deserialisation (so the deserialisation exception handler drops
     * them); null stays null (tombstones).
     */
    static <T> Serde<T> serde(TypeReference<T> type) {
        Serializer<T> ser = (topic, v) -> v == null ? null : bytes(v);
        Deserializer<T> de = (topic, data) -> {
            if (data == null) {
                return null;
            }
            try {
                return MAPPER.convertValue(parse(data), type);
            } catch (IOException | IllegalArgumentException e) {
                throw new SerializationException("value is not valid JSON: " + e.getMessage(), e);
            }
        };
        return Serdes.serdeFrom(ser, de);
    }

    static Serde<JsonNode> nodeSerde() {
        return serde(new TypeReference<JsonNode>() {});
    }

    /**
     * An input line's key or value as bytes, as `weir test` makes them: a JSON
     * string is its text, {"b64": ...} the decoded bytes, null or absent none,
     * any other JSON its JSON text.
     */
    static byte[] inputBytes(JsonNode v) {
        if (v == null || v.isNull() || v.isMissingNode()) {
            return null;
        }
        if (v.isTextual()) {
            return v.textValue().getBytes(StandardCharsets.UTF_8);
        }
        if (v.isObject() && v.size() == 1 && v.has("b64")) {
            return Base64.getDecoder().decode(v.get("b64").asText());
        }
        return bytes(v);
    }

    /** Output bytes as weir prints them: JSON if they are JSON, else text, else {"b64": ...}. */
    static JsonNode render(byte[] bytes) {
        JsonNodeFactory f = JsonNodeFactory.instance;
        if (bytes == null) {
            return f.nullNode();
        }
        try {
            return parse(bytes);
        } catch (IOException notJson) {
            try {
                return f.textNode(StandardCharsets.UTF_8.newDecoder()
                        .onMalformedInput(CodingErrorAction.REPORT)
                        .onUnmappableCharacter(CodingErrorAction.REPORT)
                        .decode(ByteBuffer.wrap(bytes))
                        .toString());
            } catch (CharacterCodingException notText) {
                return object().put("b64", Base64.getEncoder().encodeToString(bytes));
            }
        }
    }
}
