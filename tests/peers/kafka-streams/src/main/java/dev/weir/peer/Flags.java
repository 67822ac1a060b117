package dev.weir.peer;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/** Command-line arguments: `--name value` flags plus positional arguments. */
final class Flags {
    private final Map<String, String> flags = new HashMap<>();
    private final List<String> positional = new ArrayList<>();

    Flags(String[] args, int from) {
        for (int i = from; i < args.length; i++) {
            String a = args[i];
            if (a.startsWith("--")) {
                int eq = a.indexOf('=');
                if (eq > 0) {
                    flags.put(a.substring(2, eq), a.substring(eq + 1));
                } else if (i + 1 < args.length) {
                    flags.put(a.substring(2), args[++i]);
                } else {
                    throw new IllegalArgumentException("flag " + a + " needs a value");
                }
            } else {
                positional.add(a);
            }
        }
    }

    String require(String name) {
        String v = flags.get(name);
        if (v == null) {
            throw new IllegalArgumentException("missing --" + name);
        }
        return v;
    }

    String get(String name, String fallback) {
        return flags.getOrDefault(name, fallback);
    }

    int getInt(String name, int fallback) {
        String v = flags.get(name);
        try {
            return v == null ? fallback : Integer.parseInt(v);
        } catch (NumberFormatException e) {
            throw new IllegalArgumentException("--" + name + " must be an integer, got " + v);
        }
    }

    List<String> positional() {
        return positional;
    }
}
