package dev.imutune.core;

/**
 * Causal majority vote over the last k window predictions of a segment:
 * exactly {@code imutune.runtime.engine._smooth}. For each class c the score
 * is {@code 2 * (count of c among the last k predictions, the current one
 * included) + (1 if c is the current prediction)}; the highest score wins and
 * ties go to the lower class index, so a tie in votes goes to the current
 * window's class, then to the lower index. {@link #reset} starts a new segment.
 */
public final class MajoritySmoother {
    private final int k;
    private final int numClasses;
    private final int[] last;   // circular: the last k predictions
    private int count;
    private int head;
    private final int[] votes;

    public MajoritySmoother(int k, int numClasses) {
        if (k < 1 || numClasses < 1) {
            throw new IllegalArgumentException("smoothing needs k >= 1 and numClasses >= 1, got k=" + k
                    + ", numClasses=" + numClasses);
        }
        this.k = k;
        this.numClasses = numClasses;
        last = new int[k];
        votes = new int[numClasses];
    }

    /** Add the current window's prediction; returns the smoothed class. */
    public int push(int pred) {
        if (pred < 0 || pred >= numClasses) {
            throw new IllegalArgumentException("prediction " + pred + " is not a class index in [0, " + numClasses + ")");
        }
        last[head] = pred;
        head = (head + 1) % k;
        if (count < k) count++;
        if (k == 1) return pred;
        java.util.Arrays.fill(votes, 0);
        for (int i = 0; i < count; i++) votes[last[i]]++;
        int best = 0;
        int bestScore = -1;
        for (int c = 0; c < numClasses; c++) {
            int score = 2 * votes[c] + (c == pred ? 1 : 0);
            if (score > bestScore) {
                best = c;
                bestScore = score;
            }
        }
        return best;
    }

    public void reset() {
        count = 0;
        head = 0;
    }
}
