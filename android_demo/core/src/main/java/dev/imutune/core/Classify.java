package dev.imutune.core;

/** Argmax and softmax of one window's logits. */
public final class Classify {
    private Classify() {}

    /** Index of the largest logit; the first one on ties (numpy's argmax). */
    public static int argmax(float[] logits) {
        if (logits.length == 0) throw new IllegalArgumentException("logits are empty");
        int best = 0;
        for (int k = 1; k < logits.length; k++) {
            if (logits[k] > logits[best]) best = k;
        }
        return best;
    }

    /** Softmax probabilities (max-shifted, in double precision). */
    public static double[] softmax(float[] logits) {
        double max = Double.NEGATIVE_INFINITY;
        for (float v : logits) max = Math.max(max, v);
        double[] p = new double[logits.length];
        double sum = 0;
        for (int k = 0; k < logits.length; k++) {
            p[k] = Math.exp(logits[k] - max);
            sum += p[k];
        }
        for (int k = 0; k < p.length; k++) p[k] /= sum;
        return p;
    }
}
