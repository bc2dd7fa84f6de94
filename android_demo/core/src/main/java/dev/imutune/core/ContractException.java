package dev.imutune.core;

/**
 * A manifest, model file or sensor setup that breaks the export contract
 * (the Java counterpart of the Python loader's ValueError). The message names
 * the file or field, the value seen and what was expected.
 */
public class ContractException extends IllegalArgumentException {
    private static final long serialVersionUID = 1L;

    public ContractException(String message) {
        super(message);
    }
}
