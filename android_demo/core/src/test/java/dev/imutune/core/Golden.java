package dev.imutune.core;

import java.io.File;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.List;

import org.json.JSONArray;
import org.json.JSONObject;

/** Reads the golden data written by {@code imutune replay --dump-golden} (golden.json + little-endian .bin). */
final class Golden {
    static File dir() {
        File d = new File(System.getProperty("golden.dir", "src/test/resources/golden"));
        if (!new File(d, "golden.json").isFile()) {
            throw new IllegalStateException("golden data not found in " + d.getAbsolutePath()
                    + " (set -Dgolden.dir or run android_demo/tools/make_golden.py)");
        }
        return d;
    }

    static JSONObject json(String name) throws Exception {
        return new JSONObject(new String(Files.readAllBytes(new File(dir(), name).toPath()), StandardCharsets.UTF_8));
    }

    static final class Stream {
        String recording;
        int smoothingK;
        int nSamples;
        int nChannels;
        int t;
        int k;
        float[] samples;         // (S, C)
        long[] windowEnds;       // (W,)
        float[] inputs;          // (W, C, T)
        float[] logits;          // (W, K)
        long[] predictions;      // (W,)
        long[] smoothed;         // (W,)

        int nWindows() { return windowEnds.length; }

        float[] sample(int i) {
            float[] s = new float[nChannels];
            System.arraycopy(samples, i * nChannels, s, 0, nChannels);
            return s;
        }

        float[] logitsOf(int w) {
            float[] l = new float[k];
            System.arraycopy(logits, w * k, l, 0, k);
            return l;
        }
    }

    static List<Stream> streams() throws Exception {
        JSONObject index = json("golden.json");
        JSONArray arr = index.getJSONArray("streams");
        List<Stream> out = new ArrayList<>();
        for (int i = 0; i < arr.length(); i++) {
            JSONObject s = arr.getJSONObject(i);
            JSONObject f = s.getJSONObject("files");
            Stream g = new Stream();
            g.recording = s.getString("recording");
            g.smoothingK = s.getInt("smoothing_k");
            g.nSamples = s.getInt("n_samples");
            g.nChannels = f.getJSONObject("samples").getJSONArray("shape").getInt(1);
            g.t = f.getJSONObject("inputs").getJSONArray("shape").getInt(2);
            g.k = f.getJSONObject("logits").getJSONArray("shape").getInt(1);
            g.samples = floats(f.getJSONObject("samples"));
            g.windowEnds = longs(f.getJSONObject("window_ends"));
            g.inputs = floats(f.getJSONObject("inputs"));
            g.logits = floats(f.getJSONObject("logits"));
            g.predictions = longs(f.getJSONObject("predictions"));
            g.smoothed = longs(f.getJSONObject("smoothed_predictions"));
            out.add(g);
        }
        return out;
    }

    private static ByteBuffer bytes(JSONObject spec, String dtype) throws Exception {
        if (!dtype.equals(spec.getString("dtype"))) {
            throw new IllegalStateException(spec + ": expected dtype " + dtype);
        }
        byte[] b = Files.readAllBytes(new File(dir(), spec.getString("file")).toPath());
        long n = 1;
        JSONArray shape = spec.getJSONArray("shape");
        for (int i = 0; i < shape.length(); i++) n *= shape.getLong(i);
        if (b.length != n * (dtype.equals("<f4") ? 4 : 8)) {
            throw new IllegalStateException(spec + ": file has " + b.length + " bytes");
        }
        return ByteBuffer.wrap(b).order(ByteOrder.LITTLE_ENDIAN);
    }

    private static float[] floats(JSONObject spec) throws Exception {
        ByteBuffer bb = bytes(spec, "<f4");
        float[] out = new float[bb.remaining() / 4];
        bb.asFloatBuffer().get(out);
        return out;
    }

    private static long[] longs(JSONObject spec) throws Exception {
        ByteBuffer bb = bytes(spec, "<i8");
        long[] out = new long[bb.remaining() / 8];
        bb.asLongBuffer().get(out);
        return out;
    }

    private Golden() {}
}
