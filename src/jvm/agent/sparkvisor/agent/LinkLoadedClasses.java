/*
 * Loaded by sparkvisor into a running Java 17 or 18 driver right before it
 * asks that driver for a dynamic CDS archive (`VM.cds dynamic_dump`). Those
 * JVMs archive only linked classes, and a Spark driver holds thousands that
 * were loaded but never linked; an archive written at a normal exit links
 * them first. This does the same from inside: reflection links a class
 * without initialising it, so no static initialiser of the app ever runs
 * here. Linking can load further classes (field types), so it repeats until
 * nothing new appears, at most MAX_ROUNDS times. A class that fails to link
 * stays as it was and is left out of the archive.
 *
 * Rebuild the jar beside this file with `make agent` (tests check that the
 * jar holds this source's class).
 */
package sparkvisor.agent;

import java.lang.instrument.Instrumentation;
import java.util.Collections;
import java.util.IdentityHashMap;
import java.util.Set;

public final class LinkLoadedClasses {
    private static final int MAX_ROUNDS = 8;

    private LinkLoadedClasses() {}

    public static void agentmain(String args, Instrumentation inst) {
        Set<Class<?>> seen = Collections.newSetFromMap(new IdentityHashMap<>());
        for (int round = 0; round < MAX_ROUNDS; round++) {
            boolean found = false;
            for (Class<?> c : inst.getAllLoadedClasses()) {
                if (c.isArray() || c.isPrimitive() || !seen.add(c)) {
                    continue;
                }
                found = true;
                try {
                    c.getDeclaredFields();
                } catch (LinkageError | RuntimeException e) {
                    // Not linkable: the dump skips it, as it would anyway.
                }
            }
            if (!found) {
                return;
            }
        }
    }
}
