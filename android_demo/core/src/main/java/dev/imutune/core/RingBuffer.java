package dev.imutune.core;

/**
 * Fixed-length FIFO of the latest T samples of C channels (the Python
 * runtime's {@code RingBuffer}): preallocated, {@link #push} writes in place,
 * {@link #copyWindow} reads the window oldest first. Not thread-safe: feed it
 * from one thread (the sensor HandlerThread).
 */
public final class RingBuffer {
    private final int t;
    private final int c;
    private final float[] buf;   // (T, C) circular, row = one sample
    private int pos;             // row the next sample goes to (the oldest once full)
    private int filled;
    private long total;

    public RingBuffer(int windowSamples, int nChannels) {
        if (windowSamples < 1 || nChannels < 1) {
            throw new IllegalArgumentException("ring buffer needs window_samples >= 1 and n_channels >= 1, got "
                    + windowSamples + " and " + nChannels);
        }
        t = windowSamples;
        c = nChannels;
        buf = new float[t * c];
    }

    public int windowSamples() { return t; }
    public int channels() { return c; }
    public int filled() { return filled; }
    public boolean isFull() { return filled == t; }
    public long totalPushed() { return total; }

    public void reset() {
        pos = 0;
        filled = 0;
        total = 0;
    }

    /** Append one sample of C values (manifest channel order). */
    public void push(float[] sample) {
        if (sample.length != c) {
            throw new IllegalArgumentException("sample has " + sample.length + " values; expected " + c);
        }
        System.arraycopy(sample, 0, buf, pos * c, c);
        pos = (pos + 1) % t;
        if (filled < t) filled++;
        total++;
    }

    /** Value of channel {@code ch} at time {@code i} of the window (0 = oldest). */
    public float get(int i, int ch) {
        if (filled < t) throw new IllegalStateException("ring buffer holds " + filled + " of " + t + " samples");
        return buf[((pos + i) % t) * c + ch];
    }

    /** The window oldest first as (T, C) row-major into {@code out} (length T * C). */
    public void copyWindow(float[] out) {
        if (filled < t) throw new IllegalStateException("ring buffer holds " + filled + " of " + t + " samples");
        int first = (t - pos) * c;
        System.arraycopy(buf, pos * c, out, 0, first);
        System.arraycopy(buf, 0, out, first, pos * c);
    }
}
