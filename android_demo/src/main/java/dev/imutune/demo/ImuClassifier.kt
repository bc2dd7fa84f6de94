package dev.imutune.demo

import org.json.JSONObject
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import org.pytorch.executorch.Tensor
import java.io.File

/**
 * Sliding-window classifier for an imutune export (model.pte + manifest.json).
 * Mirrors imutune.runtime.replay: ring buffer, per-channel normalization, one inference per hop.
 */
class ImuClassifier(modelFile: File, manifestFile: File) {
    private val manifest = JSONObject(manifestFile.readText())
    val classNames: List<String> = manifest.getJSONArray("class_names").let { a -> List(a.length()) { a.getString(it) } }
    val channels: List<String> = manifest.getJSONArray("channels").let { a -> List(a.length()) { a.getString(it) } }
    val sampleRateHz: Double = manifest.getDouble("sample_rate_hz")
    private val windowSamples = manifest.getInt("window_samples")
    private val hopSamples = manifest.getInt("hop_samples")
    private val mean = manifest.getJSONArray("norm_mean").let { a -> FloatArray(a.length()) { a.getDouble(it).toFloat() } }
    private val std = manifest.getJSONArray("norm_std").let { a -> FloatArray(a.length()) { a.getDouble(it).toFloat() } }
    private val nChannels = channels.size
    private val module: Module = Module.load(modelFile.absolutePath)

    private val ring = Array(nChannels) { FloatArray(windowSamples) }  // ring[c][t]
    private val input = FloatArray(nChannels * windowSamples)          // (1, C, T) row-major
    private var head = 0          // next write position
    private var filled = 0        // samples in the buffer, up to windowSamples
    private var sinceLast = 0     // samples since the last inference

    /** Push one sample (C values in manifest channel order); returns a class name when a window completes. */
    fun push(sample: FloatArray): String? {
        require(sample.size == nChannels) { "sample has ${sample.size} values; expected $nChannels ($channels)" }
        for (c in 0 until nChannels) ring[c][head] = sample[c]
        head = (head + 1) % windowSamples
        if (filled < windowSamples) filled++
        sinceLast++
        if (filled < windowSamples || sinceLast < hopSamples) return null
        sinceLast = 0
        return classNames[infer()]
    }

    private fun infer(): Int {
        // (T, C) ring, oldest at `head` -> normalized (1, C, T)
        for (c in 0 until nChannels) {
            val row = ring[c]
            for (t in 0 until windowSamples) {
                input[c * windowSamples + t] = (row[(head + t) % windowSamples] - mean[c]) / std[c]
            }
        }
        val x = Tensor.fromBlob(input, longArrayOf(1, nChannels.toLong(), windowSamples.toLong()))
        val logits = module.forward(EValue.from(x))[0].toTensor().dataAsFloatArray
        var best = 0
        for (k in 1 until logits.size) if (logits[k] > logits[best]) best = k
        return best
    }
}
