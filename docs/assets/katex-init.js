// Render the maths that pymdownx.arithmatex marks (class "arithmatex": \[...\] blocks from the
// docstrings' `.. math::` directives, \(...\) inline) with the vendored KaTeX (assets/katex/).
// Material for MkDocs calls document$ on every page load, instant navigation included.
function gatattnRenderMath(root) {
  for (const el of root.querySelectorAll(".arithmatex")) {
    renderMathInElement(el, {
      delimiters: [
        { left: "\\[", right: "\\]", display: true },
        { left: "\\(", right: "\\)", display: false },
      ],
      throwOnError: false,
    });
  }
}

if (typeof document$ !== "undefined") {
  document$.subscribe(({ body }) => gatattnRenderMath(body));
} else {
  document.addEventListener("DOMContentLoaded", () => gatattnRenderMath(document.body));
}
