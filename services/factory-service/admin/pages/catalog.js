// Products and batches: create them and download a batch's tag ids as CSV. The API has no
// list routes for these, so the page keeps what this tab created or looked up (memory only).

import { Action } from '../action.js';
import { get } from '../api.js';
import { h, field, form, section, errorBox, notice, when, table } from '../dom.js';

// A product id (a UUID); surrounding spaces (a pasted id) are allowed and trimmed before use.
const UUID_PATTERN = '\\s*[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\\s*';

const products = new Map(); // id -> product, kept across page switches in this tab
const batches = [];

/** Forgets what this tab kept (on sign-out, or when another user's session takes over). */
export function forget() {
  products.clear();
  batches.length = 0;
}

export async function render(root) {
  const productSlot = h('div');
  const batchSlot = h('div');
  const batchErrors = errorBox();
  const productChoices = h('datalist', { id: 'product-choices' });
  const createProduct = new Action();
  const createBatch = new Action();

  function redraw() {
    productChoices.replaceChildren(...[...products.values()].map((p) => h('option', { value: p.id, text: `${p.name} (${p.sku})` })));
    productSlot.replaceChildren(products.size === 0
      ? h('p', { class: 'empty', text: 'No products created or looked up in this session yet.' })
      : table('Products', ['Name', 'SKU', 'Id', 'Created'], [...products.values()].map((p) => [
        p.name, h('code', { text: p.sku }), h('code', { class: 'id', text: p.id }), when(p.created_at),
      ])));
    batchSlot.replaceChildren(batches.length === 0
      ? h('p', { class: 'empty', text: 'No batches created in this session yet.' })
      : table('Batches', ['Batch', 'Product', 'Quantity', 'Created', ''], batches.map((b) => [
        h('code', { class: 'id', text: b.id }),
        products.get(b.product_id)?.name ?? h('code', { text: b.product_id }),
        String(b.quantity),
        when(b.created_at),
        h('button', { type: 'button', class: 'small', text: 'Download tags CSV', 'aria-label': `Download tags CSV of batch ${b.id}`, onclick: () => download(b) }),
      ])));
  }

  async function download(batch) {
    batchErrors.clear();
    try {
      // Fetched with the bearer token (a plain link could not send it), then saved locally.
      const blob = await get(`/v1/batches/${encodeURIComponent(batch.id)}/tags`, { blob: true });
      const url = URL.createObjectURL(blob);
      const link = h('a', { href: url, download: `batch-${batch.id}-tags.csv`, hidden: true });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10_000);
    } catch (err) {
      batchErrors.show(err);
    }
  }

  const productForm = form({ class: 'inline' }, [
    field('Product name', { name: 'name', required: true, maxchars: 200 }),
    field('SKU', { name: 'sku', required: true, maxchars: 100 }),
  ], 'Create product', async ({ name, sku }, el) => {
    const product = await createProduct.send('POST', '/v1/products', { name: name.trim(), sku: sku.trim() });
    products.set(product.id, product);
    el.reset();
    notice(`Product “${product.name}” created.`);
    redraw();
  });

  const lookupForm = form({ class: 'inline' }, [
    field('Id of an existing product', { name: 'id', required: true, pattern: UUID_PATTERN, spellcheck: 'false' }),
  ], 'Look up', async ({ id }, el) => {
    const product = await get(`/v1/products/${encodeURIComponent(id.trim())}`);
    products.set(product.id, product);
    el.reset();
    redraw();
  });

  const batchForm = form({ class: 'inline' }, [
    field('Product id', { name: 'product_id', required: true, pattern: UUID_PATTERN, list: 'product-choices', spellcheck: 'false', autocomplete: 'off' }, 'Pick a product above or paste its id.'),
    field('Quantity', { name: 'quantity', type: 'number', required: true, min: 1, max: 100000, value: 100 }),
  ], 'Create batch', async ({ product_id: productId, quantity }) => {
    const batch = await createBatch.send('POST', '/v1/batches', { product_id: productId.trim(), quantity: Number(quantity) });
    batches.unshift(batch);
    notice(`Batch of ${batch.quantity} tags created.`);
    redraw();
  });

  root.append(
    h('h1', { text: 'Products and batches' }),
    h('div', { class: 'columns' },
      section('New product', productForm, h('h3', { text: 'Find a product' }), lookupForm),
      section('New batch', batchForm, productChoices)),
    section('Products', productSlot),
    section('Batches', batchErrors.el, batchSlot),
  );
  redraw();
}
