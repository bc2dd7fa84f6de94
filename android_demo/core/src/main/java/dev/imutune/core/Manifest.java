package dev.imutune.core;

import java.io.ByteArrayOutputStream;
import java.io.File;
import java.io.FileInputStream;
import java.io.FileNotFoundException;
import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.HashSet;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeSet;

import org.json.JSONArray;
import org.json.JSONException;
import org.json.JSONObject;
import org.json.JSONTokener;

/**
 * The export manifest ({@code manifest.json} from {@code imutune export}), read strictly with the same
 * contract checks as the Python loader ({@code imutune.deploy.manifest.load_manifest} and
 * {@code imutune.signal.contract.Preprocessing.from_dict}): version 2; exactly the manifest keys plus the
 * preprocessing contract keys; channel and class lists of unique non-empty names; units null or one per
 * channel; positive finite sample rate, window and hop; stored {@code window_samples} / {@code hop_samples}
 * equal to {@code round(s * Hz)} (round half to even, as Python's round); a window of at least 8 samples;
 * purity in (0, 1]; per-channel float32-range normalization with std &gt; 0; layout {@code "NCT"}; artifacts
 * with plain file names, a SHA-256 and a known format. {@link #verifyArtifact} checks a model file's SHA-256
 * against its entry. Uses Android's own {@code org.json}, so the same class runs on the phone.
 */
public final class Manifest {
    public static final int VERSION = 2;
    public static final List<String> MANIFEST_KEYS = Collections.unmodifiableList(Arrays.asList(
            "version", "model_name", "model_config", "input_layout", "input_name", "output_name", "artifacts"));
    public static final List<String> CONTRACT_KEYS = Collections.unmodifiableList(Arrays.asList(
            "channels", "units", "class_names", "sample_rate_hz", "window_s", "hop_s", "window_samples",
            "hop_samples", "min_purity", "norm_mean", "norm_std"));
    /** Contract keys a manifest may omit (absent: unknown), as {@code imutune.signal.contract.OPTIONAL_CONTRACT_KEYS}. */
    public static final List<String> OPTIONAL_CONTRACT_KEYS = Collections.unmodifiableList(Arrays.asList("gravity"));
    public static final int MIN_WINDOW_SAMPLES = 8;
    public static final int MAX_WINDOW_SAMPLES = 1 << 20;
    private static final int MAX_NAMES = 100_000;
    private static final int MAX_NAME_CHARS = 256;
    private static final long MAX_JSON_BYTES = 64L << 20;
    private static final double F32_MAX = 3.4028234663852886e38;
    private static final double F32_TINY = 1.1754943508222875e-38;
    private static final List<String> FORMATS = Arrays.asList("onnx", "pte");

    public final String source;
    public final String modelName;
    public final List<String> channels;
    /** Whether the accelerometer includes gravity (true: TYPE_ACCELEROMETER; false: TYPE_LINEAR_ACCELERATION);
     *  null when the manifest does not say (older exports). */
    public final Boolean gravity;
    /** One unit per channel (entries may be null), or null when the manifest declares none. */
    public final List<String> units;
    public final List<String> classNames;
    public final double sampleRateHz;
    public final double windowS;
    public final double hopS;
    public final int windowSamples;
    public final int hopSamples;
    public final double minPurity;
    /** Per-channel normalization as float32 (what the model input uses): x' = (x - mean) / std. */
    public final float[] normMean;
    public final float[] normStd;
    public final String inputLayout;
    public final String inputName;
    public final String outputName;
    /** File name -> {sha256, format (may be null), precision (may be null)}. */
    public final Map<String, Artifact> artifacts;

    /** One {@code artifacts} entry. */
    public static final class Artifact {
        public final String name;
        public final String sha256;
        public final String format;
        public final String precision;

        Artifact(String name, String sha256, String format, String precision) {
            this.name = name;
            this.sha256 = sha256;
            this.format = format;
            this.precision = precision;
        }
    }

    private Manifest(String source, JSONObject d) {
        this.source = source;
        Object version = d.opt("version");
        if (!(version instanceof Number) || ((Number) version).doubleValue() != VERSION) {   // Python: 2 == 2.0
            throw err(source + " has version " + repr(version) + "; expected " + VERSION
                    + " (re-export with this imutune)");
        }
        List<String> missing = new ArrayList<>();
        for (String k : MANIFEST_KEYS) if (!d.has(k)) missing.add(k);
        for (String k : CONTRACT_KEYS) if (!d.has(k)) missing.add(k);
        Set<String> unknown = new TreeSet<>();
        for (Iterator<?> it = d.keys(); it.hasNext(); ) {
            String k = (String) it.next();
            if (!MANIFEST_KEYS.contains(k) && !CONTRACT_KEYS.contains(k) && !OPTIONAL_CONTRACT_KEYS.contains(k)) {
                unknown.add(k);
            }
        }
        if (!missing.isEmpty() || !unknown.isEmpty()) {
            throw err(source + " is missing or has unexpected fields: missing " + missing + ", unknown " + unknown
                    + "; expected " + MANIFEST_KEYS + " plus " + CONTRACT_KEYS);
        }
        String w = source + ": ";
        channels = names("channels", d.opt("channels"), w);
        classNames = names("class_names", d.opt("class_names"), w);
        windowS = positive("window_s", d.opt("window_s"), w);
        hopS = positive("hop_s", d.opt("hop_s"), w);
        sampleRateHz = positive("sample_rate_hz", d.opt("sample_rate_hz"), w);
        Object purity = d.opt("min_purity");
        if (!(purity instanceof Number) || !(((Number) purity).doubleValue() > 0.0 && ((Number) purity).doubleValue() <= 1.0)) {
            throw err(w + "min_purity must be in (0, 1], got " + repr(purity));
        }
        minPurity = ((Number) purity).doubleValue();
        checkSamples("window_s", windowS, w);
        checkSamples("hop_s", hopS, w);
        windowSamples = (int) Math.rint(windowS * sampleRateHz);
        hopSamples = Math.max(1, (int) Math.rint(hopS * sampleRateHz));
        if (windowSamples < MIN_WINDOW_SAMPLES) {
            throw err(w + "window_s * sample_rate_hz gives " + windowSamples + " samples per window; expected >= "
                    + MIN_WINDOW_SAMPLES);
        }
        units = units(d.opt("units"), channels.size(), w);
        Object g = d.opt("gravity");
        if (g == null || g == JSONObject.NULL) {
            gravity = null;
        } else if (g instanceof Boolean) {
            gravity = (Boolean) g;
        } else {
            throw err(w + "gravity in preprocessing must be true (accelerometer includes gravity), false (gravity "
                    + "removed) or null (unknown), got " + repr(g));
        }
        Object mean = d.opt("norm_mean");
        Object std = d.opt("norm_std");
        if ((mean == JSONObject.NULL) != (std == JSONObject.NULL)) {
            throw err(w + "normalization needs both norm_mean and norm_std (or neither); got norm_mean="
                    + repr(mean) + ", norm_std=" + repr(std));
        }
        if (mean == JSONObject.NULL) {
            throw err(w + "norm_mean / norm_std are null; a model's preprocessing needs its per-channel normalization");
        }
        normMean = stats("norm_mean", mean, channels.size(), false, w);
        normStd = stats("norm_std", std, channels.size(), true, w);
        storedCount("window_samples", d.opt("window_samples"), windowSamples, w);
        storedCount("hop_samples", d.opt("hop_samples"), hopSamples, w);
        if (!(d.opt("model_config") instanceof JSONObject)) {
            throw err(w + "manifest model_config must be a dict, got " + typeName(d.opt("model_config")));
        }
        modelName = shortString("model_name", d.opt("model_name"), w);
        inputName = shortString("input_name", d.opt("input_name"), w);
        outputName = shortString("output_name", d.opt("output_name"), w);
        Object layout = d.opt("input_layout");
        if (!"NCT".equals(layout)) {
            throw err(w + "manifest input_layout is " + repr(layout) + "; expected one of [NCT] (batch, channel, time)");
        }
        inputLayout = "NCT";
        artifacts = artifacts(d.opt("artifacts"), source);
    }

    // ------------------------------------------------------------------ loading

    /** Read and validate {@code manifest.json}. */
    public static Manifest load(File file) throws IOException {
        if (!file.isFile()) {
            throw new FileNotFoundException("manifest '" + file.getPath() + "' does not exist (or is not a file); "
                    + "expected the manifest.json written by imutune export");
        }
        if (file.length() > MAX_JSON_BYTES) {
            throw err("manifest '" + file.getPath() + "' is " + file.length() + " bytes; expected at most "
                    + MAX_JSON_BYTES);
        }
        try (InputStream in = new FileInputStream(file)) {
            return parse(readAll(in), "manifest '" + file.getPath() + "'");
        }
    }

    /** Read and validate a manifest from a stream (e.g. an Android asset); {@code name} names it in messages. */
    public static Manifest load(InputStream in, String name) throws IOException {
        return parse(readAll(in), "manifest '" + name + "'");
    }

    /** Validate manifest bytes (UTF-8 JSON, optional BOM); {@code source} names the file in messages. */
    public static Manifest parse(byte[] bytes, String source) {
        String text;
        try {
            text = StandardCharsets.UTF_8.newDecoder().onMalformedInput(CodingErrorAction.REPORT)
                    .onUnmappableCharacter(CodingErrorAction.REPORT)
                    .decode(java.nio.ByteBuffer.wrap(bytes)).toString();
        } catch (CharacterCodingException e) {
            throw err(source + " is not UTF-8 text (" + e + "); expected JSON");
        }
        if (text.startsWith("\uFEFF")) text = text.substring(1);
        Object v;
        try {
            JSONTokener tok = new JSONTokener(text);
            v = tok.nextValue();
            if (tok.nextClean() != 0) {   // trailing data after the value ("{...} x"): Python's json.loads refuses it too
                throw new JSONException("extra data after the JSON value");
            }
        } catch (JSONException e) {
            throw err(source + " is not valid JSON (" + e.getMessage() + "); it may be truncated");
        }
        if (!(v instanceof JSONObject)) {
            throw err(source + " holds a JSON " + typeName(v) + "; expected an object");
        }
        return new Manifest(source, (JSONObject) v);
    }

    private static byte[] readAll(InputStream in) throws IOException {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        byte[] b = new byte[1 << 16];
        int n;
        while ((n = in.read(b)) > 0) {
            out.write(b, 0, n);
            if (out.size() > MAX_JSON_BYTES) throw err("manifest is over " + MAX_JSON_BYTES + " bytes");
        }
        return out.toByteArray();
    }

    // ------------------------------------------------------------------ artifacts

    /**
     * Check a model file against its manifest entry (by file name and SHA-256), like
     * {@code imutune.deploy.manifest.verify_artifact}. Returns the entry.
     */
    public Artifact verifyArtifact(File model) throws IOException {
        if (!model.isFile()) {
            throw new FileNotFoundException("model artifact '" + model.getPath() + "' does not exist");
        }
        try (InputStream in = new FileInputStream(model)) {
            return verifyArtifact(in, model.getName(), model.getPath());
        }
    }

    /** As {@link #verifyArtifact(File)} for a stream (an Android asset) named {@code fileName}. */
    public Artifact verifyArtifact(InputStream in, String fileName, String where) throws IOException {
        Artifact entry = artifacts.get(fileName);
        if (entry == null) {
            throw err("model artifact '" + where + "' is not listed in the manifest; it lists "
                    + new TreeSet<>(artifacts.keySet()));
        }
        String digest = sha256(in);
        if (!digest.equals(entry.sha256)) {
            throw err("model artifact '" + where + "' has sha256 " + digest.substring(0, 16) + "...; the manifest "
                    + "expects " + entry.sha256.substring(0, Math.min(16, entry.sha256.length()))
                    + "... (file changed or belongs to another export)");
        }
        return entry;
    }

    /** Hex SHA-256 of a stream's bytes. */
    public static String sha256(InputStream in) throws IOException {
        MessageDigest md;
        try {
            md = MessageDigest.getInstance("SHA-256");
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException(e);
        }
        byte[] b = new byte[1 << 20];
        int n;
        while ((n = in.read(b)) > 0) md.update(b, 0, n);
        StringBuilder sb = new StringBuilder();
        for (byte x : md.digest()) sb.append(String.format("%02x", x & 0xff));
        return sb.toString();
    }

    // ------------------------------------------------------------------ derived

    public int numChannels() { return channels.size(); }
    public int numClasses() { return classNames.size(); }

    /** One line for logs: channels, rate, window and hop. */
    public String describe() {
        return channels.size() + " channels " + channels + ", " + classNames.size() + " classes, " + windowS
                + " s window / " + hopS + " s hop at " + sampleRateHz + " Hz (T=" + windowSamples + ", hop "
                + hopSamples + " samples)";
    }

    // ------------------------------------------------------------------ field checks

    private static ContractException err(String msg) {
        return new ContractException(msg);
    }

    private static String typeName(Object v) {
        if (v == null || v == JSONObject.NULL) return "null";
        if (v instanceof JSONObject) return "object";
        if (v instanceof JSONArray) return "array";
        if (v instanceof String) return "string";
        if (v instanceof Boolean) return "boolean";
        if (v instanceof Number) return "number";
        return v.getClass().getSimpleName();
    }

    private static String repr(Object v) {
        String s = v == null ? "(absent)" : v == JSONObject.NULL ? "null"
                : v instanceof String ? "'" + v + "'" : String.valueOf(v);
        return s.length() <= 80 ? s : s.substring(0, 80) + "...";
    }

    private static double positive(String name, Object v, String w) {
        if (!(v instanceof Number)) throw err(w + name + " must be a positive number, got " + repr(v));
        double x = ((Number) v).doubleValue();
        if (Double.isNaN(x) || Double.isInfinite(x) || x <= 0) {
            throw err(w + name + " must be a positive number, got " + repr(v));
        }
        return x;
    }

    private void checkSamples(String name, double sec, String w) {
        double prod = sec * sampleRateHz;
        if (Double.isInfinite(prod) || Double.isNaN(prod) || prod > MAX_WINDOW_SAMPLES) {
            throw err(w + name + " * sample_rate_hz is " + prod + " samples (" + sec + " s at " + sampleRateHz
                    + " Hz); expected at most " + MAX_WINDOW_SAMPLES);
        }
    }

    private static void storedCount(String name, Object v, int derived, String w) {
        boolean isInt = v instanceof Integer || v instanceof Long;
        if (!isInt || ((Number) v).longValue() != derived) {
            throw err(w + name + " is " + repr(v) + " but window_s/hop_s at sample_rate_hz give " + derived
                    + "; expected the derived value");
        }
    }

    private static List<String> names(String name, Object v, String w) {
        if (!(v instanceof JSONArray)) {
            throw err(w + name + " must be a list of names, got " + typeName(v) + " " + repr(v));
        }
        JSONArray a = (JSONArray) v;
        if (a.length() == 0 || a.length() > MAX_NAMES) {
            throw err(w + name + " has " + a.length() + " entries; expected 1 to " + MAX_NAMES);
        }
        List<String> out = new ArrayList<>();
        Set<String> seen = new HashSet<>();
        Set<String> dup = new TreeSet<>();
        for (int i = 0; i < a.length(); i++) {
            Object e = a.opt(i);
            if (!(e instanceof String) || ((String) e).trim().isEmpty() || ((String) e).length() > MAX_NAME_CHARS) {
                throw err(w + name + " has invalid entries [" + repr(e) + "]; expected non-empty strings of at most "
                        + MAX_NAME_CHARS + " characters");
            }
            if (!seen.add((String) e)) dup.add((String) e);
            out.add((String) e);
        }
        if (!dup.isEmpty()) {
            throw err(w + name + " lists " + dup + " more than once; expected unique names");
        }
        return Collections.unmodifiableList(out);
    }

    private static List<String> units(Object v, int n, String w) {
        if (v == JSONObject.NULL) return null;
        if (!(v instanceof JSONArray)) {
            throw err(w + "units must be null or a list of " + n + " unit strings (e.g. [g, m/s^2, rad/s, deg/s]), got "
                    + typeName(v) + " " + repr(v));
        }
        JSONArray a = (JSONArray) v;
        if (a.length() != n) {
            throw err(w + "units has " + a.length() + " entries; expected " + n + " (one per channel)");
        }
        List<String> out = new ArrayList<>();
        boolean any = false;
        for (int i = 0; i < n; i++) {
            Object u = a.opt(i);
            if (u == JSONObject.NULL) {
                out.add(null);
                continue;
            }
            if (!(u instanceof String) || ((String) u).trim().isEmpty() || ((String) u).length() > 32) {
                throw err(w + "units has invalid entries [" + repr(u) + "]; expected unit strings such as "
                        + "[g, m/s^2, rad/s, deg/s] or null (not declared)");
            }
            out.add((String) u);
            any = true;
        }
        return any ? Collections.unmodifiableList(out) : null;
    }

    private static float[] stats(String name, Object v, int n, boolean positive, String w) {
        if (!(v instanceof JSONArray)) {
            throw err(w + name + " must be a list of " + n + " numbers, got " + typeName(v) + " " + repr(v));
        }
        JSONArray a = (JSONArray) v;
        if (a.length() != n) {
            throw err(w + "normalization " + name + " has " + a.length() + " values; expected " + n
                    + " (one per channel)");
        }
        float[] out = new float[n];
        for (int i = 0; i < n; i++) {
            Object e = a.opt(i);
            if (!(e instanceof Number)) throw err(w + name + "[" + i + "] must be a number, got " + repr(e));
            double f = ((Number) e).doubleValue();
            if (Double.isNaN(f) || Double.isInfinite(f) || Math.abs(f) > F32_MAX) {
                throw err(w + name + "[" + i + "] must be a finite number within float32 range (the model input is "
                        + "float32), got " + repr(e));
            }
            if (positive && !(f >= F32_TINY)) {
                throw err(w + name + "[" + i + "] must be > 0 (a per-channel standard deviation of at least "
                        + "1.18e-38, float32's smallest normal number), got " + repr(e));
            }
            out[i] = (float) f;   // the runtime normalizes in float32, as np.asarray(..., dtype=np.float32)
        }
        return out;
    }

    private static String shortString(String name, Object v, String w) {
        if (!(v instanceof String) || ((String) v).isEmpty() || ((String) v).length() > 256) {
            throw err(w + "manifest " + name + " must be a non-empty str of at most 256 characters, got " + repr(v));
        }
        return (String) v;
    }

    private static Map<String, Artifact> artifacts(Object v, String src) {
        if (!(v instanceof JSONObject)) {
            throw err(src + ": artifacts is a " + typeName(v) + "; expected an object (file name -> entry)");
        }
        JSONObject o = (JSONObject) v;
        Map<String, Artifact> out = new LinkedHashMap<>();
        for (Iterator<?> it = o.keys(); it.hasNext(); ) {
            String name = (String) it.next();
            if (name.isEmpty() || name.equals(".") || name.equals("..") || name.contains("/") || name.contains("\\")
                    || name.contains("\0")) {
                throw err(src + ": artifact name '" + name + "' is not a plain file name; expected a file in the "
                        + "manifest's folder such as 'model.onnx'");
            }
            Object e = o.opt(name);
            if (!(e instanceof JSONObject)) {
                throw err(src + ": artifacts['" + name + "'] is a " + typeName(e) + "; expected an object");
            }
            JSONObject entry = (JSONObject) e;
            Object sha = entry.opt("sha256");
            if (!(sha instanceof String) || ((String) sha).isEmpty()) {
                throw err(src + ": artifacts['" + name + "'] has sha256 " + repr(sha) + "; expected a hex SHA-256 string");
            }
            Object fmt = entry.opt("format");
            if (fmt != null && fmt != JSONObject.NULL && !FORMATS.contains(fmt)) {
                throw err(src + ": artifacts['" + name + "'] has format " + repr(fmt) + "; expected one of " + FORMATS);
            }
            Object prec = entry.opt("precision");
            out.put(name, new Artifact(name, (String) sha, fmt instanceof String ? (String) fmt : null,
                    prec instanceof String ? (String) prec : null));
        }
        return Collections.unmodifiableMap(out);
    }
}
