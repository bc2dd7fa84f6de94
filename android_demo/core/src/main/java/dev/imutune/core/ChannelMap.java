package dev.imutune.core;

import java.util.ArrayList;
import java.util.List;

/**
 * Selects the manifest's channels, by name and in the manifest's order, from a source that provides
 * {@code sourceChannels} (the Python runtime's channel selection). A manifest channel the source lacks is
 * a {@link ContractException} naming the source, its channels and the expected ones.
 */
public final class ChannelMap {
    private final int[] index;
    private final int sourceWidth;

    private ChannelMap(int[] index, int sourceWidth) {
        this.index = index;
        this.sourceWidth = sourceWidth;
    }

    public static ChannelMap of(List<String> sourceChannels, Manifest manifest, String sourceName) {
        List<String> missing = new ArrayList<>();
        for (String c : manifest.channels) if (!sourceChannels.contains(c)) missing.add(c);
        if (!missing.isEmpty()) {
            throw new ContractException("recording '" + sourceName + "' lacks channels " + missing
                    + " required by the manifest; it has " + sourceChannels + ", the manifest expects "
                    + manifest.channels);
        }
        int[] idx = new int[manifest.channels.size()];
        for (int i = 0; i < idx.length; i++) idx[i] = sourceChannels.indexOf(manifest.channels.get(i));
        return new ChannelMap(idx, sourceChannels.size());
    }

    /** Source sample (source channel order) -> manifest order, into {@code out} (length C). */
    public float[] select(float[] sourceSample, float[] out) {
        if (sourceSample.length != sourceWidth) {
            throw new IllegalArgumentException("sample has " + sourceSample.length + " values; the source has "
                    + sourceWidth + " channels");
        }
        for (int i = 0; i < index.length; i++) out[i] = sourceSample[index[i]];
        return out;
    }

    public int[] indices() { return index.clone(); }
}
