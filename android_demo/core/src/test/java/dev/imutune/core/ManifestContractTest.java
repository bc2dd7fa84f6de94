package dev.imutune.core;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNotNull;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.io.File;
import java.io.FileNotFoundException;
import java.io.FileOutputStream;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.Arrays;

import org.json.JSONArray;
import org.json.JSONObject;
import org.junit.Rule;
import org.junit.Test;
import org.junit.rules.TemporaryFolder;

/** Manifest parsing and the contract errors: Python's verdicts, channel mismatch, hash mismatch, bad manifests. */
public class ManifestContractTest {
    @Rule public TemporaryFolder tmp = new TemporaryFolder();

    static String goldenManifestText() throws Exception {
        return new String(Files.readAllBytes(new File(Golden.dir(), "manifest.json").toPath()), StandardCharsets.UTF_8);
    }

    /** The golden (exported) manifest with {@code "units": ...} replaced when {@code unitsField} is given. */
    static Manifest manifestWith(String unitsField) throws Exception {
        JSONObject d = new JSONObject(goldenManifestText());
        if (unitsField != null) {
            d.put("units", new JSONObject("{" + unitsField + "}").getJSONArray("units"));
        }
        return Manifest.parse(d.toString().getBytes(StandardCharsets.UTF_8), "manifest 'test'");
    }

    static ContractException rejects(String text) {
        try {
            Manifest.parse(text.getBytes(StandardCharsets.UTF_8), "manifest 'manifest.json'");
        } catch (ContractException e) {
            return e;
        }
        fail("manifest accepted: " + text.substring(0, Math.min(120, text.length())));
        return null;
    }

    static void assertMentions(Exception e, String... parts) {
        for (String p : parts) {
            assertTrue("message '" + e.getMessage() + "' should mention '" + p + "'", e.getMessage().contains(p));
        }
    }

    @Test
    public void exportedManifestLoads() throws Exception {
        Manifest m = Manifest.load(new File(Golden.dir(), "manifest.json"));
        assertEquals(Arrays.asList("acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "gyr_z"), m.channels);
        assertEquals(7, m.numClasses());
        assertEquals(50.0, m.sampleRateHz, 0);
        assertEquals(100, m.windowSamples);
        assertEquals(50, m.hopSamples);
        assertEquals("NCT", m.inputLayout);
        assertNotNull(m.artifacts.get("model.onnx"));
        assertEquals(64, m.artifacts.get("model.onnx").sha256.length());
    }

    @Test
    public void rejectsExactlyWhatThePythonLoaderRejects() throws Exception {
        JSONObject doc = Golden.json("contract_cases.json");
        int rejected = 0;
        int n = 0;
        for (String key : new String[] {"cases", "raw_cases"}) {
            JSONArray cases = doc.getJSONArray(key);
            for (int i = 0; i < cases.length(); i++) {
                JSONObject c = cases.getJSONObject(i);
                boolean pythonRejects = !c.isNull("python_error");
                String text = c.getString("text");
                String javaError = null;
                try {
                    Manifest.parse(text.getBytes(StandardCharsets.UTF_8), "manifest 'manifest.json'");
                } catch (ContractException e) {
                    javaError = e.getMessage();
                }
                if (pythonRejects != (javaError != null)) {
                    fail("case '" + c.getString("name") + "': Python " + (pythonRejects ? "rejects ("
                            + c.getString("python_error") + ")" : "accepts") + ", Java " + (javaError != null
                            ? "rejects (" + javaError + ")" : "accepts"));
                }
                if (pythonRejects) rejected++;
                n++;
            }
        }
        assertTrue("cases on both sides", n >= 40 && rejected >= 30);
        System.out.println("[contract] " + n + " manifest cases, " + rejected + " rejected by both loaders, "
                + (n - rejected) + " accepted by both");
    }

    @Test
    public void badManifestMessagesNameTheField() throws Exception {
        JSONObject d = new JSONObject(goldenManifestText());
        d.remove("hop_s");
        assertMentions(rejects(d.toString()), "manifest.json", "missing [hop_s]");
        d = new JSONObject(goldenManifestText());
        d.put("window_samples", 99);
        assertMentions(rejects(d.toString()), "window_samples is 99", "give 100");
        d = new JSONObject(goldenManifestText());
        d.put("norm_std", new JSONArray(Arrays.asList(1, 1, 1, 1, 1, 0)));
        assertMentions(rejects(d.toString()), "norm_std[5]", "must be > 0");
        assertMentions(rejects("{\"version\": 2,"), "not valid JSON");
        assertMentions(rejects("[1, 2]"), "holds a JSON array");
    }

    @Test
    public void gravityIsReadAndAnythingButABooleanOrNullIsRefused() throws Exception {
        JSONObject d = new JSONObject(goldenManifestText());
        d.remove("gravity");
        assertNull(Manifest.parse(d.toString().getBytes(StandardCharsets.UTF_8), "m").gravity);   // older exports
        d.put("gravity", true);
        assertEquals(Boolean.TRUE, Manifest.parse(d.toString().getBytes(StandardCharsets.UTF_8), "m").gravity);
        d.put("gravity", false);
        assertEquals(Boolean.FALSE, Manifest.parse(d.toString().getBytes(StandardCharsets.UTF_8), "m").gravity);
        d.put("gravity", JSONObject.NULL);
        assertNull(Manifest.parse(d.toString().getBytes(StandardCharsets.UTF_8), "m").gravity);
        d.put("gravity", "yes");
        assertMentions(rejects(d.toString()), "gravity", "must be true", "got 'yes'");
    }

    @Test(expected = FileNotFoundException.class)
    public void missingManifestFileIsFileNotFound() throws Exception {
        Manifest.load(new File(tmp.getRoot(), "nope.json"));
    }

    @Test
    public void modelHashIsVerified() throws Exception {
        File model = tmp.newFile("model.onnx");
        try (FileOutputStream o = new FileOutputStream(model)) {
            o.write("pretend model bytes".getBytes(StandardCharsets.UTF_8));
        }
        String sha;
        try (java.io.InputStream in = new java.io.FileInputStream(model)) {
            sha = Manifest.sha256(in);
        }
        // SHA-256("pretend model bytes"), as hashlib computes it
        assertEquals(64, sha.length());
        JSONObject d = new JSONObject(goldenManifestText());
        d.put("artifacts", new JSONObject().put("model.onnx", new JSONObject().put("sha256", sha).put("format", "onnx")));
        Manifest m = Manifest.parse(d.toString().getBytes(StandardCharsets.UTF_8), "manifest 'm.json'");
        assertEquals("onnx", m.verifyArtifact(model).format);
        try (FileOutputStream o = new FileOutputStream(model, true)) {
            o.write('!');
        }
        try {
            m.verifyArtifact(model);
            fail("changed model accepted");
        } catch (ContractException e) {
            assertMentions(e, "model.onnx", "has sha256", "the manifest expects " + sha.substring(0, 16));
        }
        File other = tmp.newFile("model.pte");
        try {
            m.verifyArtifact(other);
            fail("unlisted model accepted");
        } catch (ContractException e) {
            assertMentions(e, "is not listed in the manifest", "[model.onnx]");
        }
    }

    @Test
    public void exportedManifestRejectsAnotherModelFile() throws Exception {
        Manifest m = Manifest.load(new File(Golden.dir(), "manifest.json"));
        File fake = tmp.newFile("model.onnx");
        try {
            m.verifyArtifact(fake);
            fail("an empty model.onnx matched the export's hash");
        } catch (ContractException e) {
            assertMentions(e, "has sha256 e3b0c44298fc1c14...", m.artifacts.get("model.onnx").sha256.substring(0, 16));
        }
    }

    @Test
    public void channelMismatchIsAContractError() throws Exception {
        Manifest m = manifestWith(null);
        try {
            ChannelMap.of(Arrays.asList("acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y"), m, "phone");
            fail("missing channel accepted");
        } catch (ContractException e) {
            assertMentions(e, "'phone'", "lacks channels [gyr_z]", "the manifest expects [acc_x");
        }
        ChannelMap cm = ChannelMap.of(Arrays.asList("gyr_z", "gyr_y", "gyr_x", "acc_z", "acc_y", "acc_x", "mag_x"), m, "x");
        float[] out = new float[6];
        cm.select(new float[] {6, 5, 4, 3, 2, 1, 0}, out);
        assertEquals("[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]", Arrays.toString(out));

        JSONObject d = new JSONObject(goldenManifestText());
        d.put("channels", new JSONArray(Arrays.asList("acc_x", "acc_y", "acc_z", "mag_x", "mag_y", "mag_z")));
        Manifest mag = Manifest.parse(d.toString().getBytes(StandardCharsets.UTF_8), "manifest 'mag'");
        try {
            new SensorFusion(mag, null);
            fail("magnetometer channels accepted");
        } catch (ContractException e) {
            assertMentions(e, "[mag_x, mag_y, mag_z] have no Android sensor source");
        }
    }

    @Test
    public void unitsTheAppCannotProduceAreRefused() throws Exception {
        Manifest m = manifestWith("\"units\": [\"furlong\", \"g\", \"g\", \"rad/s\", \"rad/s\", \"rad/s\"]");
        try {
            new SensorFusion(m, null);
            fail("unknown unit accepted");
        } catch (ContractException e) {
            assertMentions(e, "acc_x", "'furlong'");
        }
        try {
            new SensorFusion(manifestWith(null), null);
            fail("undeclared units without a fallback accepted");
        } catch (ContractException e) {
            assertMentions(e, "no unit in the manifest");
        }
        assertNull(manifestWith("\"units\": [null, null, null, null, null, null]").units);
    }

    @Test
    public void backendOutputIsChecked() throws Exception {
        Manifest m = manifestWith(null);
        Backend wrong = new Backend() {
            @Override public float[] run(float[] input, long[] shape) { return new float[3]; }
            @Override public String name() { return "wrong"; }
            @Override public void close() {}
        };
        WindowPipeline p = new WindowPipeline(m, wrong, 1);
        try {
            for (int i = 0; i < m.windowSamples; i++) p.push(new float[6]);
            fail("3 logits accepted for 7 classes");
        } catch (ContractException e) {
            assertMentions(e, "returned 3 logits", "expected 7");
        }
        Backend nan = new Backend() {
            @Override public float[] run(float[] input, long[] shape) {
                float[] l = new float[7];
                Arrays.fill(l, Float.NaN);
                return l;
            }
            @Override public String name() { return "nan"; }
            @Override public void close() {}
        };
        WindowPipeline q = new WindowPipeline(m, nan, 1);
        try {
            for (int i = 0; i < m.windowSamples; i++) q.push(new float[6]);
            fail("NaN logits accepted");
        } catch (ContractException e) {
            assertMentions(e, "non-finite logits", "sample 100");
        }
    }
}
