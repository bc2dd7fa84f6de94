package dev.imutune.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;

import java.io.File;
import java.util.ArrayList;
import java.util.List;

import org.json.JSONArray;
import org.json.JSONObject;
import org.junit.Test;

/**
 * The phone loop against the Python reference runtime: the golden raw samples fed through
 * {@link WindowPipeline} must give the same window ends, normalized inputs within 1e-6 and (from the
 * golden logits) the same predicted and smoothed labels.
 */
public class GoldenParityTest {
    static final double INPUT_TOL = 1e-6;

    /** Returns the golden logits of window w in order and records every input it is given. */
    static final class ReplayBackend implements Backend {
        final Golden.Stream g;
        final List<float[]> inputs = new ArrayList<>();
        int calls;

        ReplayBackend(Golden.Stream g) { this.g = g; }

        @Override
        public float[] run(float[] input, long[] shape) {
            assertArrayEquals(new long[] {1, g.nChannels, g.t}, shape);
            inputs.add(input.clone());
            return g.logitsOf(calls++);
        }

        @Override public String name() { return "golden-logits"; }
        @Override public void close() {}
    }

    static Manifest manifest() throws Exception {
        return Manifest.load(new File(Golden.dir(), "manifest.json"));
    }

    @Test
    public void goldenDataIsNonTrivial() throws Exception {
        List<Golden.Stream> streams = Golden.streams();
        assertTrue("at least one golden stream", streams.size() >= 1);
        int changes = 0;
        for (Golden.Stream g : streams) {
            assertTrue(g.recording + " has windows", g.nWindows() >= 2);
            for (int w = 1; w < g.nWindows(); w++) if (g.predictions[w] != g.predictions[w - 1]) changes++;
        }
        assertTrue("the golden predictions change at least once (an exercise switch)", changes >= 1);
    }

    @Test
    public void windowEndsInputsAndLabelsMatchThePythonRuntime() throws Exception {
        Manifest m = manifest();
        double worst = 0;
        int windows = 0;
        for (Golden.Stream g : Golden.streams()) {
            assertEquals(m.numChannels(), g.nChannels);
            assertEquals(m.windowSamples, g.t);
            ReplayBackend backend = new ReplayBackend(g);
            WindowPipeline p = new WindowPipeline(m, backend, g.smoothingK);
            List<WindowPipeline.Result> results = new ArrayList<>();
            for (int i = 0; i < g.nSamples; i++) {
                WindowPipeline.Result r = p.push(g.sample(i));
                if (r != null) results.add(r);
            }
            assertEquals(g.recording + ": window count", g.nWindows(), results.size());
            int ct = g.nChannels * g.t;
            for (int w = 0; w < results.size(); w++) {
                WindowPipeline.Result r = results.get(w);
                assertEquals(g.recording + ": end of window " + w, g.windowEnds[w], r.windowEnd);
                float[] mine = backend.inputs.get(w);
                for (int j = 0; j < ct; j++) {
                    double d = Math.abs(mine[j] - g.inputs[w * ct + j]);
                    worst = Math.max(worst, d);
                    if (d > INPUT_TOL) {
                        throw new AssertionError(g.recording + ": window " + w + " input[" + (j / g.t) + ", "
                                + (j % g.t) + "] is " + mine[j] + ", the Python runtime's " + g.inputs[w * ct + j]);
                    }
                }
                assertEquals(g.recording + ": label of window " + w, g.predictions[w], r.predicted);
                assertEquals(g.recording + ": smoothed label of window " + w, g.smoothed[w], r.smoothed);
                assertEquals(m.classNames.get((int) g.predictions[w]), r.label);
                assertTrue(r.confidence > 0 && r.confidence <= 1);
                windows++;
            }
        }
        System.out.println("[parity] " + windows + " windows; max |input - python input| = " + worst
                + " (tolerance " + INPUT_TOL + "); window ends, labels and smoothed labels identical");
    }

    @Test
    public void argmaxOfGoldenLogitsIsThePythonPrediction() throws Exception {
        for (Golden.Stream g : Golden.streams()) {
            for (int w = 0; w < g.nWindows(); w++) {
                assertEquals(g.predictions[w], Classify.argmax(g.logitsOf(w)));
            }
        }
    }

    @Test
    public void smootherMatchesThePythonReferenceOnSyntheticSequences() throws Exception {
        JSONArray cases = Golden.json("smoothing_cases.json").getJSONArray("cases");
        assertTrue(cases.length() > 0);
        for (int i = 0; i < cases.length(); i++) {
            JSONObject c = cases.getJSONObject(i);
            JSONArray pred = c.getJSONArray("predictions");
            JSONArray segs = c.getJSONArray("segments");
            JSONArray want = c.getJSONArray("smoothed");
            MajoritySmoother s = new MajoritySmoother(c.getInt("k"), c.getInt("num_classes"));
            for (int w = 0; w < pred.length(); w++) {
                if (w > 0 && segs.getInt(w) != segs.getInt(w - 1)) s.reset();
                assertEquals("case " + i + " (k=" + c.getInt("k") + ") window " + w, want.getInt(w),
                        s.push(pred.getInt(w)));
            }
        }
    }
}
