package dev.imutune.core;

/**
 * The phone-side loop of {@code imutune.runtime.replay}: samples (manifest channel order and units) go
 * into a {@link RingBuffer}; at every window end of the {@link HopSchedule} the window is normalized with
 * the manifest statistics in float32 ({@code (x - mean) / std}), laid out as (1, C, T) row-major
 * ({@code input[c * T + t]}), passed to the {@link Backend}, and the argmax, softmax confidence and
 * majority-vote smoothed class ({@link MajoritySmoother}, k windows) are returned.
 * Single-threaded: call {@link #push} from the sensor thread only.
 */
public final class WindowPipeline {
    private final Manifest manifest;
    private final Backend backend;
    private final RingBuffer ring;
    private final HopSchedule schedule;
    private final MajoritySmoother smoother;
    private final int c;
    private final int t;
    private final int k;
    private final float[] input;
    private final long[] shape;
    private long windows;

    /** Outcome of one window. */
    public static final class Result {
        public final long windowEnd;        // exclusive end sample index since the stream start
        public final float[] logits;
        public final int predicted;
        public final String label;
        public final double confidence;     // softmax probability of the predicted class
        public final int smoothed;
        public final String smoothedLabel;
        public final double latencyMs;      // backend.run wall time

        Result(long windowEnd, float[] logits, int predicted, String label, double confidence, int smoothed,
               String smoothedLabel, double latencyMs) {
            this.windowEnd = windowEnd;
            this.logits = logits;
            this.predicted = predicted;
            this.label = label;
            this.confidence = confidence;
            this.smoothed = smoothed;
            this.smoothedLabel = smoothedLabel;
            this.latencyMs = latencyMs;
        }
    }

    public WindowPipeline(Manifest manifest, Backend backend, int smoothingK) {
        this.manifest = manifest;
        this.backend = backend;
        c = manifest.numChannels();
        t = manifest.windowSamples;
        k = manifest.numClasses();
        ring = new RingBuffer(t, c);
        schedule = new HopSchedule(t, manifest.hopSamples);
        smoother = new MajoritySmoother(smoothingK, k);
        input = new float[c * t];
        shape = new long[] {1, c, t};
    }

    /** One sample of C values; a {@link Result} when a window ends with it, else null. */
    public Result push(float[] sample) throws Exception {
        ring.push(sample);
        if (!schedule.onSample()) return null;
        normalizeInto(input);
        long t0 = System.nanoTime();
        float[] logits = backend.run(input, shape);
        double latencyMs = (System.nanoTime() - t0) / 1e6;
        if (logits == null || logits.length != k) {
            throw new ContractException("backend '" + backend.name() + "' returned " + (logits == null ? "null"
                    : logits.length + " logits") + " for a (1, " + c + ", " + t + ") window; expected " + k
                    + " for the manifest's classes " + manifest.classNames);
        }
        int cls = Classify.argmax(logits);
        if (Float.isNaN(logits[cls]) || Float.isInfinite(logits[cls])) {
            throw new ContractException("backend '" + backend.name() + "' returned non-finite logits "
                    + java.util.Arrays.toString(logits) + " for the window ending at sample " + schedule.samples());
        }
        double conf = Classify.softmax(logits)[cls];
        int sm = smoother.push(cls);
        windows++;
        return new Result(schedule.samples(), logits.clone(), cls, manifest.classNames.get(cls), conf, sm,
                manifest.classNames.get(sm), latencyMs);
    }

    /** The current window, normalized, as (1, C, T) row-major into {@code out} (length C * T). */
    public void normalizeInto(float[] out) {
        float[] mean = manifest.normMean;
        float[] std = manifest.normStd;
        for (int ch = 0; ch < c; ch++) {
            float m = mean[ch];
            float s = std[ch];
            int row = ch * t;   // (T, C) ring -> (1, C, T): channel-first
            for (int i = 0; i < t; i++) {
                float d = ring.get(i, ch) - m;   // float32 arithmetic, as numpy's float32 subtract / divide
                out[row + i] = d / s;
            }
        }
    }

    /** The last input given to the backend (do not modify). */
    public float[] lastInput() { return input; }

    public long windows() { return windows; }

    /** Start a new stream (empty buffer, window schedule and smoother from the start). */
    public void reset() {
        ring.reset();
        schedule.reset();
        smoother.reset();
    }
}
