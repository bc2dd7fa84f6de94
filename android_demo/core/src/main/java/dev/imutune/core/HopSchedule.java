package dev.imutune.core;

/**
 * When windows fire: the first once T samples have arrived, then every H
 * samples (window w ends, exclusively, at sample T + w * H), as in
 * {@code imutune.runtime.replay}: a stream of S samples gives
 * {@code 1 + (S - T) / H} windows.
 */
public final class HopSchedule {
    private final int window;
    private final int hop;
    private long n;
    private long nextEnd;

    public HopSchedule(int windowSamples, int hopSamples) {
        if (windowSamples < 1 || hopSamples < 1) {
            throw new IllegalArgumentException("window and hop must be >= 1 sample, got " + windowSamples + " and "
                    + hopSamples);
        }
        window = windowSamples;
        hop = hopSamples;
        nextEnd = windowSamples;
    }

    /** Count one sample; true when a window ends with it. */
    public boolean onSample() {
        n++;
        if (n != nextEnd) return false;
        nextEnd += hop;
        return true;
    }

    /** Samples counted so far: the exclusive end index of a window that just fired. */
    public long samples() { return n; }

    public void reset() {
        n = 0;
        nextEnd = window;
    }
}
